-- Every runner table now lives in a schema of its own (DATABASE_SCHEMA, `jobrunner` by default;
-- migrate.py creates it and moves older installations out of public before this runs).
DO $$
BEGIN
    EXECUTE format(
        'COMMENT ON SCHEMA %I IS %L', current_schema(),
        'Tables of the Max Booster job runner (spool, durable jobs, dead letters, email and analytics '
        'bookkeeping). Managed by `python -m worker migrate`; keep it out of the web app''s schema sync.'
    );
END
$$;

-- Track titles for the weekly insights email, kept in sync by the web app (like
-- analytics_contacts) and filled by stream imports that carry a title column.
CREATE TABLE analytics_tracks (
    track_id   text PRIMARY KEY,
    artist_id  text NOT NULL,
    title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    updated_at timestamptz NOT NULL DEFAULT now()
);
