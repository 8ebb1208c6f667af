-- Marks the schema as owned by the Max Booster job runner; later migrations add the tables
-- each job family needs (email idempotency keys, analytics events, the spool, dead letters).
-- (Before the runner had a schema of its own this commented on public.schema_migrations; that
-- table is now the runner schema's job_runner_migrations.)
COMMENT ON TABLE job_runner_migrations IS 'Applied migrations of the Max Booster job runner';
