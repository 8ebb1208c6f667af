"""Re-enqueues durable jobs that Redis lost (a restart without persistence, an eviction).

A durable job is recorded in the ledger before it is queued and settled when it finishes,
queued or inline. Every `DURABLE_CHECK_INTERVAL` seconds the reconciler looks at records old
enough that their enqueue is over: one whose result is in the backend is done (its completion
was not recorded), one that ran inline is settled, one held by a live inline run is left
alone, and one the backend has no trace of is queued again under the same id. So a job that is
merely waiting or running is never doubled, and a job that already ran never runs again.
"""

from __future__ import annotations

import asyncio

import structlog

from core.errors import BackendError
from worker.backend.protocol import Presence, QueueBackend
from worker.ledger.ledger import PG_DOWN_ERRORS, Ledger

__all__ = ["DurableReconciler"]

log = structlog.get_logger(__name__)

_MIN_AGE_S = 10
_BATCH = 1000


class DurableReconciler:
    def __init__(self, ledger: Ledger, backend: QueueBackend, *, interval_s: float = 15.0) -> None:
        self._ledger = ledger
        self._backend = backend
        self._interval_s = interval_s
        self.requeued = 0

    async def reconcile_once(self) -> int:
        """Check one batch of durable records; return how many jobs were queued again."""
        if not self._backend.usable:
            return 0
        # Younger records may belong to an enqueue still in flight.
        records = await self._ledger.durable_to_check(
            min_age_s=min(_MIN_AGE_S, self._interval_s), limit=_BATCH
        )
        if not records:
            return 0
        presence = await self._backend.presence([r.job_id for r in records])
        done = [r.job_id for r, seen in zip(records, presence, strict=True) if seen is Presence.FINISHED]
        lost = [r for r, seen in zip(records, presence, strict=True) if seen is Presence.UNKNOWN]
        await self._ledger.durable_settled(done)
        for record in lost:
            await self._backend.enqueue(
                record.queue,
                job_id=record.job_id,
                name=record.name,
                kwargs=record.kwargs,
                defer_by_s=record.defer_by_s,
                traceparent=record.traceparent,
            )
            await self._ledger.durable_requeued(record.job_id)
            log.warning("durable job lost by Redis, queued again", job_id=record.job_id, job=record.name)
        self.requeued += len(lost)
        return len(lost)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.reconcile_once()
            except BackendError as exc:
                log.warning("durable reconciliation skipped", error=f"{type(exc).__name__}: {exc}")
            except PG_DOWN_ERRORS as exc:
                log.warning("durable reconciliation skipped", error=f"{type(exc).__name__}: {exc}")
