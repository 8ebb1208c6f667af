"""The one registry of jobs. The worker and the inline runner both read `REGISTRY`.

To add a job: write `async def name(ctx: JobContext, *, typed kwargs)` in its family's module
and add `define(name, ...)` below. Duplicate names are refused at import. `Schedule`s make the
worker run a job by itself (cron-like, UTC).
"""

from __future__ import annotations

from typing import Any

from jobs.analytics import (
    detect_analytics_anomalies,
    flush_analytics_events,
    rollup_analytics,
    send_weekly_insights,
)
from jobs.context import JobContext
from jobs.ops import ping
from jobs.registry import JobDefinition, Registry, Schedule, define

__all__ = [
    "ANALYTICS_JOBS",
    "ANALYTICS_SCHEDULES",
    "FLUSH_ANALYTICS_EVENTS",
    "REGISTRY",
    "JobContext",
    "JobDefinition",
    "Registry",
    "Schedule",
    "define",
    "ping",
]

# The producer also runs this one inline, to empty its in-process buffer while Redis is down.
FLUSH_ANALYTICS_EVENTS = define(flush_analytics_events, timeout=60, max_tries=3)

ANALYTICS_JOBS: list[JobDefinition[Any, Any]] = [
    FLUSH_ANALYTICS_EVENTS,
    define(rollup_analytics, timeout=600, max_tries=3),
    define(detect_analytics_anomalies, timeout=900, max_tries=3),
    define(send_weekly_insights, timeout=1800, max_tries=3),
]
ANALYTICS_SCHEDULES = [
    Schedule.every_seconds("flush_analytics_events", 1),
    Schedule.every_minutes("rollup_analytics", 5, second=30),
    Schedule("detect_analytics_anomalies", minute=10, second=0),
    Schedule("send_weekly_insights", weekday=0, hour=7, minute=0, second=0),
]

REGISTRY = Registry(
    [
        define(ping, timeout=60, max_tries=3),
        *ANALYTICS_JOBS,
    ],
    schedules=ANALYTICS_SCHEDULES,
)
