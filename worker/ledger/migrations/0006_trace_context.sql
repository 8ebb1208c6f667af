-- The W3C traceparent of the request that enqueued a job travels with it through the spool
-- and the durable record, so a job relayed or re-queued later still joins its request's trace.
ALTER TABLE job_spool ADD COLUMN traceparent text;
ALTER TABLE durable_jobs ADD COLUMN traceparent text;
