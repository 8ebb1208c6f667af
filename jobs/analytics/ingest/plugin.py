"""The analytics family's plug-in: how event ingestion attaches to the producer and the worker.

In a producer it runs `EventIngest` (validation, the group-committed push to the event list,
the in-process buffer while Redis is down, flush triggering) and takes the producer's
`track_event(s)` calls; the flush job run inline there reads the in-process buffer. In a worker
it gives the flush job the event list in the queue backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.plugin import PluginHost, TrackResult
from jobs.analytics.ingest.ingest import EventIngest
from jobs.analytics.ingest.list_queue import ListEventQueue
from jobs.analytics.queue import EVENT_QUEUE

__all__ = ["AnalyticsIngest"]


class AnalyticsIngest:
    name = "analytics"

    def __init__(self) -> None:
        self._ingest: EventIngest | None = None

    @property
    def ingest(self) -> EventIngest:
        if self._ingest is None:
            raise RuntimeError("analytics events are taken by a started producer, not by a worker")
        return self._ingest

    async def start(self, host: PluginHost) -> None:
        if host.role == "worker":
            host.deps.provide(EVENT_QUEUE, ListEventQueue(host.batch_list("analytics"), host.settings))
            return
        self._ingest = EventIngest(host)
        host.deps.provide(EVENT_QUEUE, self._ingest.buffer)

    async def redis_back(self) -> None:
        if self._ingest is not None:
            self._ingest.redis_back()

    async def close(self) -> None:
        """Write buffered events; raises `EventsNotDelivered` if some could not be."""
        if self._ingest is not None:
            await self._ingest.close()

    async def track(self, events: Iterable[Mapping[str, Any]]) -> TrackResult:
        return await self.ingest.track(events)

    async def track_one(self, event: Mapping[str, Any]) -> str:
        return await self.ingest.track_one(event)
