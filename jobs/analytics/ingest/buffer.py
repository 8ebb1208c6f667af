"""The producer's bounded in-process buffer of analytics event chunks, used while Redis is down.

It is an `EventQueue` for the flush job (run inline by the producer), and a chunk leaves it
only once acknowledged: written to Postgres, or pushed to Redis after an outage. Its bound is
in bytes of encoded events (about 100 bytes per event without properties). When a call does
not fit, `put` waits for room up to a timeout and then says no; it never drops anything.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from itertools import islice

import structlog

from jobs.analytics.queue import ClaimedBatch

__all__ = ["MemoryEventBuffer"]

log = structlog.get_logger(__name__)


class MemoryEventBuffer:
    """FIFO of chunks with one consumer at a time (the holder of `lock`)."""

    def __init__(self, *, max_bytes: int, batch_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.batch_bytes = batch_bytes
        self.lock = asyncio.Lock()
        self._chunks: deque[bytes] = deque()
        self._counts: deque[int] = deque()  # events per chunk
        self._bytes = 0
        self._events = 0
        self._claimed = 0  # chunks at the head handed to the consumer, not yet acknowledged
        self.acked_events = 0  # events that have left the buffer, ever
        self._room = asyncio.Condition()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def events(self) -> int:
        return self._events

    @property
    def empty(self) -> bool:
        return not self._chunks

    def fits(self, size: int) -> bool:
        # An empty buffer takes any one call, so a call larger than the bound is not refused forever.
        return self._bytes == 0 or self._bytes + size <= self.max_bytes

    async def put(self, chunks: Sequence[bytes], counts: Sequence[int], *, timeout: float) -> bool:
        """Append all of `chunks`, waiting up to `timeout` s for room; False if there was none."""
        # Exact-size copies: orjson's output keeps its growth buffer (up to ~2.5x its length),
        # which would make the byte bound a fiction.
        chunks = [memoryview(chunk).tobytes() for chunk in chunks]
        size = sum(len(chunk) for chunk in chunks)
        async with self._room:
            try:
                async with asyncio.timeout(timeout):
                    await self._room.wait_for(lambda: self.fits(size))
            except TimeoutError:
                return False
            self._chunks.extend(chunks)
            self._counts.extend(counts)
            self._bytes += size
            self._events += sum(counts)
        return True

    # -- EventQueue, for the flush job and the move back to Redis -----------------------------

    async def claim(self) -> ClaimedBatch | None:
        if self._claimed:
            raise RuntimeError("a batch of the in-process buffer is already claimed; hold its lock")
        size = 0
        for chunk in self._chunks:
            self._claimed += 1
            size += len(chunk)
            if size >= self.batch_bytes:
                break
        if not self._claimed:
            return None
        return ClaimedBatch(list(islice(self._chunks, self._claimed)), "memory")

    async def ack(self, batch: ClaimedBatch, *, dead: Sequence[bytes] = ()) -> None:
        for _ in batch.chunks:
            self._bytes -= len(self._chunks.popleft())
            count = self._counts.popleft()
            self._events -= count
            self.acked_events += count
        self._claimed = 0
        if dead:  # chunks we encoded ourselves: this would be a bug, so say it loudly
            log.error("analytics chunks from the in-process buffer refused by Postgres", chunks=len(dead))
        async with self._room:
            self._room.notify_all()

    async def release(self, batch: ClaimedBatch) -> None:
        self._claimed = 0

    async def recover(self) -> int:
        return 0
