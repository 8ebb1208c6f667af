"""Analytics jobs: buffered event ingestion, daily rollups, anomaly alerts, weekly insights,
imports of historical streams.

Events reach the flush job through the `EVENT_QUEUE` seam and emails leave through `ENQUEUE`;
neither needs the worker's code.
"""

from jobs.analytics.detect import detect_analytics_anomalies
from jobs.analytics.flush import flush_analytics_events
from jobs.analytics.imports import import_streams
from jobs.analytics.insights import send_weekly_insights
from jobs.analytics.queue import EVENT_QUEUE, ClaimedBatch, EventQueue
from jobs.analytics.rollup import rollup_analytics

__all__ = [
    "EVENT_QUEUE",
    "ClaimedBatch",
    "EventQueue",
    "detect_analytics_anomalies",
    "flush_analytics_events",
    "import_streams",
    "rollup_analytics",
    "send_weekly_insights",
]
