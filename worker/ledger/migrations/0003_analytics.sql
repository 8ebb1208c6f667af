-- Analytics: raw events (stored once per event id), the days whose totals must be recomputed,
-- daily totals, anomaly alerts, who receives analytics email, and the weekly digests sent.
-- Days are UTC days.

CREATE TABLE analytics_events (
    -- "C" collation: byte comparison keeps the primary key cheap at high insert rates.
    event_id     text COLLATE "C" PRIMARY KEY,
    event_type   text NOT NULL,
    artist_id    text NOT NULL,
    track_id     text,
    source       text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    quantity     integer NOT NULL CHECK (quantity > 0),
    amount_cents bigint NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    properties   jsonb,
    received_at  timestamptz NOT NULL DEFAULT now()
);
-- Events arrive roughly in time order, so a BRIN index finds one day's rows at almost no
-- cost per insert (a btree here would slow ingestion down).
CREATE INDEX analytics_events_occurred_at_brin ON analytics_events USING brin (occurred_at);

-- Marked in the same transaction that stores a day's events; the rollup recomputes the day and
-- clears the mark only if its version is still the one it read before recomputing.
CREATE TABLE analytics_dirty_days (
    day       date PRIMARY KEY,
    version   bigint NOT NULL DEFAULT 1,
    marked_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE analytics_daily (
    day          date NOT NULL,
    artist_id    text NOT NULL,
    track_id     text NOT NULL DEFAULT '',  -- '' for events not about one track
    source       text NOT NULL,
    event_type   text NOT NULL,
    events       bigint NOT NULL,
    quantity     bigint NOT NULL,
    amount_cents bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, artist_id, track_id, source, event_type)
);
CREATE INDEX analytics_daily_artist_day ON analytics_daily (artist_id, day);

CREATE TABLE analytics_alerts (
    alert_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    artist_id     text NOT NULL,
    track_id      text NOT NULL DEFAULT '',  -- '' for the artist's total over all tracks
    metric        text NOT NULL,             -- the event type whose daily quantity is watched
    day           date NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('spike', 'drop')),
    observed      double precision NOT NULL,
    expected      double precision NOT NULL,
    score         double precision NOT NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Set once the alert email was handed to the queue (or there was nobody to tell).
    notified_at   timestamptz,
    email_job_id  text,
    UNIQUE (artist_id, track_id, metric, day)
);
CREATE INDEX analytics_alerts_to_notify ON analytics_alerts (alert_id) WHERE notified_at IS NULL;

-- Kept in sync by the web app: where an artist's analytics email goes, and what they want.
CREATE TABLE analytics_contacts (
    artist_id       text PRIMARY KEY,
    email           text NOT NULL,
    name            text,
    weekly_insights boolean NOT NULL DEFAULT true,
    anomaly_alerts  boolean NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per artist and ISO week once the digest email is queued: a re-run skips them.
CREATE TABLE analytics_digests (
    artist_id  text NOT NULL,
    iso_week   text NOT NULL,
    job_id     text,
    summary    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (artist_id, iso_week)
);
