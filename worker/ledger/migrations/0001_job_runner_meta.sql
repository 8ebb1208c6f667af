-- Marks the schema as owned by the Max Booster job runner; later migrations add the tables
-- each job family needs (email idempotency keys, analytics events, the spool, dead letters).
COMMENT ON TABLE schema_migrations IS 'Applied migrations of the Max Booster job runner';
