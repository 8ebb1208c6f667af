-- A durable job that falls back to running inline holds its row with a lease, so the
-- reconciler does not queue a second run while (or after) it runs inline. The inline run's
-- final outcome deletes the row; a lease that ends first means the process died mid-run.
ALTER TABLE durable_jobs ADD COLUMN inline_until timestamptz;
