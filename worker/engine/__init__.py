"""The worker: the claim loop, claimed-job handling, the outcome recorder, schedules, snapshots
for `stats`, and the service that runs them all in one process."""

from worker.engine.service import WorkerService, run_worker

__all__ = ["WorkerService", "run_worker"]
