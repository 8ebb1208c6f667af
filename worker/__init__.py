"""The Max Booster job runner: the producer the web app calls, and the worker.

    from worker import Producer

Layout: `backend` (Redis), `ledger` (Postgres bookkeeping), `execution` (one attempt and its
outcome), `producer`, `engine` (the worker), `telemetry` (logs, metrics), `ops` (CLI, doctor,
stats, health). Jobs and their registry live in `jobs`, over the neutral `core`.
"""

from core.errors import EnqueueError, JobFailed, JobValidationError, PermanentError, TransientError
from worker.producer import JobHandle, Producer

__all__ = [
    "EnqueueError",
    "JobFailed",
    "JobHandle",
    "JobValidationError",
    "PermanentError",
    "Producer",
    "TransientError",
]
