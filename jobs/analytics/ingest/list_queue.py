"""The analytics event list in the queue backend, as the flush job sees it (an `EventQueue`).

A flush claims a batch: the chunks move atomically from the events list to a list of the
batch's own, registered with a lease. After the Postgres commit the batch list is deleted.
If the write fails the batch is put back at once; if the flusher dies, a later flush puts it
back when the lease is over. Backend trouble is a `TransientError`, so the job is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from core.errors import BackendError, TransientError
from core.plugin import BatchList, ClaimedBatch
from settings import Settings

__all__ = ["ListEventQueue"]

T = TypeVar("T")

# Chunks per batch at most, whatever their size: bounds the work of one Lua call.
_MAX_CHUNKS_PER_BATCH = 10_000


class ListEventQueue:
    def __init__(self, events: BatchList, settings: Settings) -> None:
        self._events = events
        self._batch_bytes = settings.analytics_batch_bytes
        self._lease_s = settings.analytics_flush_lease_s
        self.lock = asyncio.Lock()

    async def _call(self, command: Awaitable[T]) -> T:
        try:
            return await command
        except BackendError as exc:
            raise TransientError(f"Redis is unavailable for the analytics buffer: {exc}") from exc

    async def claim(self) -> ClaimedBatch | None:
        return await self._call(
            self._events.claim(
                max_bytes=self._batch_bytes, max_items=_MAX_CHUNKS_PER_BATCH, lease_s=self._lease_s
            )
        )

    async def ack(self, batch: ClaimedBatch, *, dead: Sequence[bytes] = ()) -> None:
        # If this fails after the commit, the batch comes back after its lease and is written
        # again; the event ids make that a no-op.
        await self._call(self._events.ack(batch.batch_id, dead=dead))

    async def release(self, batch: ClaimedBatch) -> None:
        await self._call(self._events.give_back(batch.batch_id))

    async def recover(self) -> int:
        return await self._call(self._events.give_back_expired())
