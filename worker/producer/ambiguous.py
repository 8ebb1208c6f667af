"""Jobs whose enqueue reply was lost.

The enqueue may or may not have landed; the producer ran the job inline rather than keep the
caller waiting on a dead Redis. Once the backend answers again, each such job's queued copy is
withdrawn if no worker has started it. If one already has, the job ran twice: at-least-once,
which every job is written to tolerate (idempotency keys, deterministic follow-up ids).
"""

from __future__ import annotations

import structlog

from worker.backend import QueueBackend, WithdrawOutcome

__all__ = ["AmbiguousReplies"]

log = structlog.get_logger(__name__)


class AmbiguousReplies:
    def __init__(self, backend: QueueBackend) -> None:
        self._backend = backend
        self._pending: set[tuple[str, str]] = set()  # (queue, job id)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, queue: str, job_id: str) -> None:
        self._pending.add((queue, job_id))

    async def withdraw_all(self) -> None:
        """Withdraw every pending copy; raises the backend's error if it fails again (the link
        then runs this again when the backend is next back)."""
        for queue, job_id in list(self._pending):
            outcome = await self._backend.withdraw(queue, job_id)
            self._pending.discard((queue, job_id))
            if outcome is WithdrawOutcome.WITHDRAWN:
                log.info("withdrew queued copy of a job already run inline", job_id=job_id)
            elif outcome is WithdrawOutcome.ALREADY_STARTED:
                log.warning("job whose enqueue reply was lost also ran queued (at-least-once)", job_id=job_id)
