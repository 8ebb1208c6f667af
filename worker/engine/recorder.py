"""Writes finished attempts to Redis in batches, and never loses one to an outage.

Finished jobs queue up here; one writer sends whatever has accumulated as one script call, so
under load many completions share a round trip while a lone job is written at once. While
Redis is down the batch waits (a finished job whose outcome is not recorded would run again);
at shutdown the wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from core.errors import BackendRefused, BackendUnavailable
from worker.backend import Finished, QueueBackend

__all__ = ["OutcomeRecorder"]

log = structlog.get_logger(__name__)


class OutcomeRecorder:
    def __init__(
        self,
        backend: QueueBackend,
        *,
        keep_result_ms: int,
        batch_size: int,
        wait_for_redis: Callable[[BaseException], Awaitable[None]],
        capped: frozenset[str] = frozenset(),
    ) -> None:
        self._backend = backend
        self._capped = capped  # queues whose finished jobs free a capped slot
        self._keep_result_ms = keep_result_ms
        self._batch_size = batch_size
        self._wait_for_redis = wait_for_redis
        self._pending: list[Finished] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait_idle(self) -> None:
        """Until everything added so far is written."""
        await self._idle.wait()

    def add(self, item: Finished) -> None:
        self._pending.append(item)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float) -> None:
        """Flush what is pending (waiting at most `timeout` s for Redis), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            log.error("could not record job outcome, it will run again", job_id=item.job_id)
        self._pending.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._batch_size]
                if await self._write(batch):
                    del self._pending[: len(batch)]
            self._idle.set()

    async def _write(self, batch: list[Finished]) -> bool:
        try:
            await self._backend.finish(batch, keep_result_ms=self._keep_result_ms, capped=self._capped)
        except BackendUnavailable as exc:
            # Writing a batch twice is harmless, so a lost reply is simply retried.
            await self._wait_for_redis(exc)
            return False
        except BackendRefused as exc:
            log.error("redis refused to record job outcomes", error=str(exc))
            await asyncio.sleep(1.0)
            return False
        return True
