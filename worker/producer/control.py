"""Queue control from a producer's process: cancel a job, pause and resume a queue.

A job may sit in any of the known queues (the ones workers are configured with, the standard
ones and any a job definition names), in the Postgres spool, or run inline in this process;
`cancel` looks everywhere. A cancelled job that waited gets a failed result of type
`JobCancelled`, so `status` says `cancelled` and `handle.result()` raises; a durable one is
settled, so it is never queued again.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from core.clock import epoch_ms
from core.codec import ResultRecord, encode_result, failure_value
from core.control import JobControl
from core.errors import EnqueueError, JobFailed
from core.flow import check_queue_name, ordered_union, queue_key
from core.registry import Registry
from settings import Settings
from worker.backend import CancelOutcome, QueueBackend
from worker.ledger import PG_DOWN_ERRORS, Ledger

__all__ = ["CANCELLED_TYPE", "QueueControl"]

log = structlog.get_logger(__name__)

# The error type of a cancelled job's result (and of the exception a job raises to honour one).
CANCELLED_TYPE = "JobCancelled"


class QueueControl:
    def __init__(self, settings: Settings, registry: Registry, backend: QueueBackend, ledger: Ledger) -> None:
        self._settings = settings
        self._backend = backend
        self._ledger = ledger
        self.names = ordered_union(settings.worker_queue_weights, registry.queues())
        self.keys = [queue_key(settings, name) for name in self.names]
        self.by_key = dict(zip(self.keys, self.names, strict=True))

    def key(self, name: str) -> str:
        return queue_key(self._settings, check_queue_name(name))

    async def cancel(self, job_id: str, inline: Mapping[str, JobControl]) -> CancelOutcome:
        control = inline.get(job_id)
        if control is not None:
            control.request_cancel()
            return CancelOutcome.REQUESTED
        error = JobFailed(job_id, CANCELLED_TYPE, "cancelled before it started", "permanent")
        try:
            if await self._ledger.cancel_spooled(job_id, error.to_dict()):
                return CancelOutcome.CANCELLED
        except PG_DOWN_ERRORS as exc:
            log.warning("could not look for the job in the spool: Postgres unreachable", error=str(exc))
        if not self._backend.usable:
            raise EnqueueError(
                f"cannot cancel {job_id}: Redis is unreachable and the job is not spooled here"
            )
        view = await self._backend.job(self.keys, job_id)
        now = epoch_ms()
        record = ResultRecord(
            job_id=job_id,
            name=view.record.name if view.record is not None else "<unknown>",
            kwargs=view.record.kwargs if view.record is not None else {},
            job_try=view.tries or 1,
            success=False,
            value=failure_value(error),
            enqueue_ms=view.record.enqueue_ms if view.record is not None else now,
            start_ms=now,
            finish_ms=now,
            queue=view.queue,
            traceparent=view.record.traceparent if view.record is not None else None,
        )
        keep_ms = int(self._settings.job_keep_result * 1000)
        outcome, queue = await self._backend.cancel(
            self.keys, job_id, encode_result(record), keep_result_ms=keep_ms
        )
        if outcome is CancelOutcome.CANCELLED:
            # A durable job's record goes too, or the reconciler would queue it again (and if
            # Postgres is away now, the reconciler finds the cancelled result and settles it).
            await self._ledger.durable_done(job_id)
        log.info("cancel", job_id=job_id, outcome=outcome.value, queue=queue)
        return outcome

    async def pause(self, name: str) -> bool:
        paused = await self._backend.pause(self.key(name))
        log.info("queue paused", queue=name, was_paused=not paused)
        return paused

    async def resume(self, name: str) -> bool:
        resumed = await self._backend.resume(self.key(name))
        log.info("queue resumed", queue=name, was_paused=resumed)
        return resumed

    async def paused(self) -> list[str]:
        """The known queues that are paused now."""
        found = await self._backend.paused(self.keys)
        return [name for name, key in zip(self.names, self.keys, strict=True) if key in found]
