-- Durability: the spool (jobs waiting for Redis, and the transactional outbox), records of
-- durable jobs until they complete, dead letters, and the outcome of jobs that ran inline.

CREATE TABLE job_spool (
    seq         bigserial PRIMARY KEY,           -- relay order
    job_id      text NOT NULL UNIQUE,
    job_name    text NOT NULL,
    payload     jsonb NOT NULL,
    queue       text NOT NULL,
    run_at      timestamptz NOT NULL DEFAULT now(),  -- deferred jobs keep their start time
    durable     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE durable_jobs (
    job_id      text PRIMARY KEY,
    job_name    text NOT NULL,
    payload     jsonb NOT NULL,
    queue       text NOT NULL,
    run_at      timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    requeued    integer NOT NULL DEFAULT 0
);

CREATE TABLE dead_letters (
    job_id      text PRIMARY KEY,
    job_name    text NOT NULL,
    payload     jsonb NOT NULL,
    error       jsonb NOT NULL,
    tries       integer NOT NULL,
    mode        text NOT NULL,
    enqueued_at timestamptz,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_failed_at ON dead_letters (failed_at);

CREATE TABLE inline_outcomes (
    job_id      text PRIMARY KEY,
    job_name    text NOT NULL,
    success     boolean NOT NULL,
    result      jsonb,
    error       jsonb,
    tries       integer NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inline_outcomes_finished_at ON inline_outcomes (finished_at);
