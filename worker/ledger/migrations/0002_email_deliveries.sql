-- One row per email idempotency key: the claim that lets a re-run of an email job send nothing.
--
-- claimed: a run holds the key until lease_until; a later run takes it over once the lease
--          has expired, or at once if it is a later try of the same job in the same mode
--          (the earlier try is known to be over).
-- sent:    delivered; provider_message_id says where. Final: a re-run returns this outcome.
-- failed:  the last try failed (error, error_kind) and nothing was delivered; another job may
--          claim the key again (the same job's retries skip a permanent refusal).
CREATE TABLE email_deliveries (
    idempotency_key     text PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 600),
    state               text NOT NULL CHECK (state IN ('claimed', 'sent', 'failed')),
    transport           text NOT NULL,
    claim_token         uuid NOT NULL,
    job_id              text NOT NULL,
    job_mode            text NOT NULL,
    job_try             integer NOT NULL,
    attempts            integer NOT NULL DEFAULT 1,
    lease_until         timestamptz NOT NULL,
    provider_message_id text,
    error               text,
    error_kind          text CHECK (error_kind IN ('transient', 'permanent')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    CHECK (state <> 'sent' OR sent_at IS NOT NULL)
);

-- Ops: claims still open (in flight, or left by a crashed run until their lease ends).
CREATE INDEX email_deliveries_open_claims ON email_deliveries (lease_until) WHERE state = 'claimed';

COMMENT ON TABLE email_deliveries IS 'Email idempotency keys: claimed, sent or failed, with the provider message id';
