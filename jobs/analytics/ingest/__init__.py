"""Analytics event ingestion, attached to the producer and the worker as a plug-in."""

from jobs.analytics.ingest.ingest import EventBufferFull, EventIngest, EventsNotDelivered, InvalidEvent
from jobs.analytics.ingest.plugin import AnalyticsIngest

__all__ = ["AnalyticsIngest", "EventBufferFull", "EventIngest", "EventsNotDelivered", "InvalidEvent"]
