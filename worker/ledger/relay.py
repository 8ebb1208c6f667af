"""The spool relay: moves spooled jobs (Redis was down, a deferred job, the outbox) into the
queue backend, in order, under their original job ids.

It runs in the worker, and in a producer that has spooled something. Rows are locked with SKIP
LOCKED, so several relays never deliver one row twice, and a re-delivery after a crash is
absorbed by the enqueue's job-id deduplication.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from core.errors import BackendUnavailable
from worker.backend.protocol import EnqueueReply, QueueBackend
from worker.ledger.ledger import PG_DOWN_ERRORS, Ledger, SpooledJob

__all__ = ["SpoolRelay"]

log = structlog.get_logger(__name__)

_BATCH = 200


class SpoolRelay:
    """Forwards spooled jobs to the backend on NOTIFY, when woken, and every `interval_s`."""

    def __init__(self, ledger: Ledger, backend: QueueBackend, *, interval_s: float = 1.0) -> None:
        self._ledger = ledger
        self._backend = backend
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self.delivered = 0

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Deliver what is due, oldest first; return how many rows left the spool."""
        if not self._backend.usable:
            return 0
        moved = 0
        while True:
            seen, delivered = await self._ledger.relay_batch(self._deliver, limit=_BATCH)
            moved += delivered
            self.delivered += delivered
            if delivered:
                log.info("spooled jobs relayed to Redis", count=delivered)
            if seen < _BATCH or delivered < seen:
                return moved

    async def _deliver(self, job: SpooledJob) -> bool:
        try:
            reply = await self._backend.enqueue(
                job.queue,
                job_id=job.job_id,
                name=job.name,
                kwargs=job.kwargs,
                defer_by_s=job.defer_by_s,
                traceparent=job.traceparent,
            )
        except BackendUnavailable:
            return False
        if reply is EnqueueReply.DUPLICATE:
            log.info("spooled job was already in Redis", job_id=job.job_id)
        return True

    async def run_forever(self) -> None:
        while True:
            try:
                async with self._ledger.spool_notifications(self.wake):
                    await self._relay_until_error()
            except PG_DOWN_ERRORS as exc:
                log.warning("spool relay cannot reach Postgres", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._interval_s * 5)

    async def _relay_until_error(self) -> None:
        while True:
            await self.relay_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
