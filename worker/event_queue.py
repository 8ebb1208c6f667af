"""The analytics event buffer in Redis, as the flush job sees it (an `EventQueue`).

A flush claims a batch: the chunks move atomically from the events list to a list of the
batch's own, registered with a lease. After the Postgres commit the batch list is deleted.
If the write fails the batch is put back at once; if the flusher dies, a later flush puts it
back when the lease is over. Redis trouble is a `TransientError`, so the job is retried.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from jobs.analytics.queue import ClaimedBatch
from settings import Settings
from worker import keys
from worker.errors import TransientError
from worker.redis_link import NotSent, RedisLink, ReplyLost

__all__ = ["RedisEventQueue"]

T = TypeVar("T")

# Chunks per batch at most, whatever their size: bounds the work of one Lua call.
_MAX_CHUNKS_PER_BATCH = 10_000


class RedisEventQueue:
    def __init__(self, link: RedisLink, settings: Settings) -> None:
        self._link = link
        queue = settings.queue_name
        self._events = keys.analytics_events_key(queue)
        self._inflight = keys.analytics_inflight_key(queue)
        self._prefix = keys.analytics_batch_prefix(queue)
        self._dead = keys.analytics_dead_key(queue)
        self._batch_bytes = settings.analytics_batch_bytes
        self._lease_s = settings.analytics_flush_lease_s
        self.lock = asyncio.Lock()

    async def _call(self, command: Awaitable[T]) -> T:
        try:
            return await command
        except (NotSent, ReplyLost) as exc:
            raise TransientError(f"Redis is unavailable for the analytics buffer: {exc}") from exc

    async def claim(self) -> ClaimedBatch | None:
        batch_id = uuid.uuid4().hex
        chunks = await self._call(
            self._link.list_claim(
                self._events,
                self._inflight,
                self._prefix + batch_id,
                batch_id,
                max_bytes=self._batch_bytes,
                max_items=_MAX_CHUNKS_PER_BATCH,
                lease_s=self._lease_s,
            )
        )
        return ClaimedBatch(chunks, batch_id) if chunks else None

    async def ack(self, batch: ClaimedBatch, *, dead: Sequence[bytes] = ()) -> None:
        # If this fails after the commit, the batch comes back after its lease and is written
        # again; the event ids make that a no-op.
        await self._call(
            self._link.list_ack(
                self._inflight, self._prefix + batch.batch_id, batch.batch_id, dead_key=self._dead, dead=dead
            )
        )

    async def release(self, batch: ClaimedBatch) -> None:
        await self._call(self._link.list_return(self._events, self._inflight, self._prefix, batch.batch_id))

    async def recover(self) -> int:
        return await self._call(self._link.list_return_expired(self._events, self._inflight, self._prefix))
