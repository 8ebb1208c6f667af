"""Analytics ingestion at the producer: `Producer.track_event(s)` land here, through the
analytics plug-in.

Events are validated (a bad one is refused with a reason and counted; the rest go on), encoded
into JSON chunks and appended to a Redis list, concurrent calls sharing a round trip. The
worker's flush job, every second, moves them into Postgres in batches. No job is queued per
event.

While Redis is unusable the chunks go to a bounded in-process buffer instead. A background
drainer empties it: to Redis as soon as Redis answers again, else straight into Postgres by
running the same flush job inline. It runs when a batch's worth has gathered, every
ANALYTICS_BUFFER_FLUSH_INTERVAL_S, and on `close()`.

When the buffer is full the call blocks (backpressure) until the drainer makes room, for at
most ANALYTICS_BUFFER_FULL_TIMEOUT_S, then raises `EventBufferFull`: no event of that call was
accepted, and the caller decides. Events are never dropped silently. `close()` waits up to
ANALYTICS_CLOSE_TIMEOUT_S for the buffer to empty and raises `EventsNotDelivered` if it cannot.
Events held in memory are lost if the process dies; Redis is the durable path.

If a push's reply is lost, the chunks are also kept in memory: they may then reach Postgres
twice, where the event id stores them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog

from core.errors import BackendError, EnqueueError, JobValidationError
from core.plugin import PluginHost, TrackResult
from jobs.analytics.events import EventLimits, encode_chunks, new_event_id, validate_events
from jobs.analytics.flush import FLUSH_JOB
from jobs.analytics.ingest.buffer import MemoryEventBuffer
from jobs.analytics.ingest.push import GroupPusher

__all__ = ["EventBufferFull", "EventIngest", "EventsNotDelivered", "InvalidEvent"]

log = structlog.get_logger(__name__)

StoredIn = Literal["redis", "memory"]


class InvalidEvent(JobValidationError):
    """`track_event` refused its event; the message says why."""


class EventBufferFull(EnqueueError):
    """Redis is down and the in-process buffer stayed full: the call's events were not accepted."""


class EventsNotDelivered(EnqueueError):
    """`close()` could not write the in-process buffer anywhere; the events it held are lost."""


class EventIngest:
    """The producer's analytics front: validation, the Redis list, the in-process buffer."""

    def __init__(self, host: PluginHost) -> None:
        settings = self._settings = host.settings
        self._host = host
        self._events = host.batch_list("analytics")
        self.buffer = MemoryEventBuffer(
            max_bytes=settings.analytics_buffer_max_bytes, batch_bytes=settings.analytics_batch_bytes
        )
        self.stats: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._closing = False
        self._last_trigger = 0.0
        self._trailing: asyncio.Task[None] | None = None
        self._pusher = GroupPusher(self._events, self._pushed)

    # -- accepting events ------------------------------------------------------------------------

    def _limits(self, now: datetime) -> EventLimits:
        s = self._settings
        return EventLimits(
            now=now,
            max_age=timedelta(seconds=s.analytics_max_event_age_s),
            max_skew=timedelta(seconds=s.analytics_max_clock_skew_s),
            max_properties_bytes=s.analytics_max_properties_bytes,
        )

    async def track(self, events: Iterable[Mapping[str, Any]]) -> TrackResult:
        raw = events if isinstance(events, list) else list(events)
        limit = self._settings.analytics_max_events_per_call
        if len(raw) > limit:
            raise JobValidationError(
                f"track_events: {len(raw)} events in one call, over the limit of {limit} "
                "(ANALYTICS_MAX_EVENTS_PER_CALL); split the call"
            )
        now = datetime.now(UTC)
        valid, refused = validate_events(raw, self._limits(now))
        if refused:
            self.stats["refused"] += len(refused)
            log.warning(
                "analytics events refused", refused=len(refused), accepted=len(valid), first=refused[0].reason
            )
        stored_in: StoredIn | None = None
        if valid:
            now_us = int(now.timestamp() * 1_000_000)
            chunks = encode_chunks(valid, now_us=now_us, chunk_events=self._settings.analytics_chunk_events)
            stored_in = await self._store(chunks, len(valid))
            self.stats["accepted"] += len(valid)
        return TrackResult(len(valid), len(refused), tuple(refused), stored_in)

    async def track_one(self, event: Mapping[str, Any]) -> str:
        """Accept one event and return its id; raises `InvalidEvent` when it is refused."""
        if event.get("event_id") is None:  # made here, so the caller learns it
            event = {**event, "event_id": new_event_id(int(time.time() * 1_000_000))}
        result = await self.track([event])
        if result.refused:
            raise InvalidEvent(f"analytics event refused: {result.errors[0].reason}")
        return str(event["event_id"])

    async def _store(self, chunks: list[bytes], events: int) -> StoredIn:
        if self._host.backend_usable and await self._pusher.push(chunks, events):
            return "redis"
        await self._buffer(chunks, events)
        return "memory"

    async def _pushed(self, events: int, length: int) -> None:
        self.stats["to_redis"] += events
        await self._maybe_trigger_flush(length)

    async def _buffer(self, chunks: list[bytes], events: int) -> None:
        size = sum(len(chunk) for chunk in chunks)
        self._ensure_drainer()
        if not self.buffer.fits(size):
            self._wake.set()
        counts = [self._settings.analytics_chunk_events] * len(chunks)
        counts[-1] = events - self._settings.analytics_chunk_events * (len(chunks) - 1)
        timeout = self._settings.analytics_buffer_full_timeout_s
        if not await self.buffer.put(chunks, counts, timeout=timeout):
            self.stats["not_accepted"] += events
            raise EventBufferFull(
                "analytics: Redis is unusable and the in-process event buffer "
                f"stayed full ({self.buffer.bytes_used} of {self.buffer.max_bytes} bytes, "
                f"ANALYTICS_BUFFER_MAX_BYTES) for {timeout:g}s; none of this call's {events} events "
                "was accepted. Retry later."
            )
        self.stats["to_memory"] += events
        if self.buffer.bytes_used >= self.buffer.batch_bytes:
            self._wake.set()

    async def _maybe_trigger_flush(self, length: int) -> None:
        """Queue a flush when events arrive, at most one a second per producer, so the worker
        flushes when there is work instead of on a per-second schedule that costs Redis commands
        when idle. Pushes inside the second get one trailing flush when the second is over, so
        the last events of a burst are never left waiting for the two-hourly sweep. A large
        backlog triggers at once."""
        backlog = length * self._settings.analytics_chunk_events  # an upper bound
        wait = 1.0 - (time.monotonic() - self._last_trigger)
        if backlog >= self._settings.analytics_flush_trigger_events or wait <= 0:
            await self._trigger_flush()
        elif self._trailing is None or self._trailing.done():
            self._trailing = asyncio.get_running_loop().create_task(self._trigger_flush(after=wait))

    async def _trigger_flush(self, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)
        self._last_trigger = time.monotonic()
        job_id = f"analytics-flush:{self._settings.queue_name}:{time.time_ns()}"
        with contextlib.suppress(JobValidationError, EnqueueError):  # no flush job here; Redis and PG down
            await self._host.enqueue(FLUSH_JOB, {}, job_id=job_id)

    # -- draining the in-process buffer ---------------------------------------------------------

    def redis_back(self) -> None:
        self._wake.set()

    def _ensure_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain_forever())

    async def _nap(self, delay: float) -> None:
        if delay > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        self._wake.clear()

    async def _drain_forever(self) -> None:
        interval = self._settings.analytics_buffer_flush_interval_s
        delay = interval
        while True:
            await self._nap(delay)
            if self.buffer.empty:
                if self._closing:
                    return
                delay = interval
                continue
            progressed = await self._drain_once()
            # Keep going while there is a batch's worth (or we are closing); else wait a while.
            busy = self._closing or self.buffer.bytes_used >= self.buffer.batch_bytes
            delay = 0 if progressed and busy else interval

    async def _drain_once(self) -> bool:
        """Move one batch to Redis, or run one flush into Postgres; True when something left."""
        acked = self.buffer.acked_events
        if self._host.backend_usable:
            async with self.buffer.lock:
                batch = await self.buffer.claim()
                if batch is None:
                    return False
                try:
                    await self._events.push(batch.chunks)
                except BackendError:
                    await self.buffer.release(batch)
                else:
                    await self.buffer.ack(batch)
                    self.stats["memory_to_redis"] += self.buffer.acked_events - acked
                    return True
        await self._host.run_attempt(FLUSH_JOB, job_id=f"inline-flush-{uuid.uuid4().hex}")
        self.stats["memory_to_postgres"] += self.buffer.acked_events - acked
        return self.buffer.acked_events > acked

    async def close(self) -> None:
        """Empty the in-process buffer (to Redis or Postgres); raise if events remain."""
        await self._pusher.aclose()
        if self._trailing is not None:
            await self._trailing  # the last pushed events get their flush
        self._closing = True
        self._wake.set()
        if self._drainer is None and not self.buffer.empty:
            self._ensure_drainer()
        if self._drainer is not None:
            try:
                async with asyncio.timeout(self._settings.analytics_close_timeout_s):
                    await asyncio.shield(self._drainer)
            except TimeoutError:
                self._drainer.cancel()
                await asyncio.gather(self._drainer, return_exceptions=True)
        if not self.buffer.empty:
            log.error("analytics events not written at close", events=self.buffer.events)
            raise EventsNotDelivered(
                f"analytics: {self.buffer.events} events held in memory while Redis was down could not be "
                f"written to Redis or Postgres within {self._settings.analytics_close_timeout_s:g}s "
                "(ANALYTICS_CLOSE_TIMEOUT_S); they are lost"
            )
