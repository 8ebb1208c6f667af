"""The one registry of jobs. The producer, the worker and the inline runner all read `REGISTRY`.

To add a job: write `async def name(ctx: JobContext, *, typed kwargs)` in its family's module
(importing only `core` and `settings`) and add `define(name, ...)` below. Duplicate names are
refused at import. `Schedule`s make the worker run a job by itself (cron-like, in UTC or the
time zone they name). A family
that needs a life of its own in the process attaches a plug-in (see `core.plugin`).

Jobs of your own, outside this package, join through JOB_MODULES (see `jobs.extra`):
`registry_for(settings)` is this registry with them.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from core.errors import JobModuleError
from core.registry import JobDefinition, Registry, Schedule, define
from jobs.ai import ai_email_variants, ai_not_configured, ai_social_captions, ai_track_tags, ai_week_narrative
from jobs.ai import costs as ai_costs
from jobs.analytics import (
    detect_analytics_anomalies,
    flush_analytics_events,
    import_streams,
    rollup_analytics,
    send_weekly_insights,
)
from jobs.analytics.ingest import AnalyticsIngest
from jobs.email import (
    BULK_EMAIL_COSTS,
    EMAIL_COSTS,
    bulk_too_big_inline,
    email_queue,
    send_bulk_email,
    send_email,
)
from jobs.extra import load_job_modules
from jobs.ops import ping
from settings import Settings

__all__ = [
    "ANALYTICS_JOBS",
    "ANALYTICS_SCHEDULES",
    "FLUSH_ANALYTICS_EVENTS",
    "REGISTRY",
    "ai_email_variants",
    "ai_social_captions",
    "ai_track_tags",
    "ai_week_narrative",
    "ping",
    "registry_for",
    "send_bulk_email",
    "send_email",
]

# The producer also runs this one inline, to empty its in-process buffer while Redis is down.
FLUSH_ANALYTICS_EVENTS = define(flush_analytics_events, timeout=60, max_tries=3, queue="bulk")

# Batch analytics waits in the spool while Redis is down rather than running in a web request,
# and in the `bulk` queue behind the mail people wait for.
ANALYTICS_JOBS: list[JobDefinition[Any, Any]] = [
    FLUSH_ANALYTICS_EVENTS,
    define(rollup_analytics, timeout=600, max_tries=3, fallback="spool", queue="bulk"),
    define(detect_analytics_anomalies, timeout=900, max_tries=3, fallback="spool", queue="bulk"),
    define(send_weekly_insights, timeout=1800, max_tries=3, fallback="spool", queue="bulk"),
    # Historical streams from a CSV report (`python -m worker import-streams FILE.csv`).
    define(import_streams, timeout=600, max_tries=3, fallback="spool", queue="bulk"),
]
# AI work is heavy: spooled while Redis is down, inline only if Postgres is down too. Re-asks
# after unusable output (AI_MAX_OUTPUT_RETRIES) happen within one try, hence the long timeout;
# tries are for outages, 429s and 5xx, spaced by backoff or Retry-After. Its own queue, capped
# per worker (WORKER_QUEUE_CONCURRENCY=ai=4), so slow AI calls never hold the slots mail needs;
# the provider's limits are shared by every worker (ai_requests, ai_tokens in RATE_LIMITS).
AI_JOBS: list[JobDefinition[Any, Any]] = [
    define(
        job,
        timeout=300,
        max_tries=5,
        precheck=ai_not_configured,
        fallback="spool",
        queue="ai",
        rate_limits=costs,
    )
    for job, costs in (
        (ai_social_captions, ai_costs.SOCIAL_CAPTIONS),
        (ai_email_variants, ai_costs.EMAIL_VARIANTS),
        (ai_week_narrative, ai_costs.WEEK_NARRATIVE),
        (ai_track_tags, ai_costs.TRACK_TAGS),
    )
]
EVERY_2H = frozenset(range(0, 24, 2))
ANALYTICS_SCHEDULES = [
    # Flushes are triggered by the producer when events arrive, and each flush that wrote rows
    # queues a rollup; these two-hourly runs only sweep up leftovers (an expired batch lease, a
    # trigger lost in an outage), so an idle worker costs Redis almost nothing.
    # A run missed while no worker was up (a deploy at 07:00 on a Monday, say) is run late.
    Schedule("flush_analytics_events", hour=EVERY_2H, minute=0, second=5, catch_up=timedelta(hours=2)),
    Schedule("rollup_analytics", hour=EVERY_2H, minute=1, second=0, catch_up=timedelta(hours=2)),
    Schedule("detect_analytics_anomalies", minute=10, second=0, catch_up=timedelta(hours=1)),
    # Monday 09:00 in New York, as the platform sends it (14:00 UTC in winter, 13:00 in summer).
    Schedule(
        "send_weekly_insights",
        weekday=0,
        hour=9,
        minute=0,
        second=0,
        tz="America/New_York",
        catch_up=timedelta(days=6),
    ),
]

REGISTRY = Registry(
    [
        define(ping, timeout=60, max_tries=3),
        # Transactional mail runs inline when Redis is down (the user is waiting for it) and is
        # durable: recorded in Postgres until sent, so a Redis that loses its data loses no mail.
        # 60 s covers an SMTP conversation at SMTP_TIMEOUT=10 s per step; EMAIL_CLAIM_LEASE outlasts it.
        # Password resets, verification and payment mail go to `critical`, the rest to `default`.
        define(send_email, timeout=60, max_tries=6, durable=True, queue=email_queue, rate_limits=EMAIL_COSTS),
        # Up to 5,000 copies: five SendGrid requests, or one SMTP transaction each. A big one is
        # never sent from a web request while Redis is down: it waits in the spool.
        define(
            send_bulk_email,
            timeout=900,
            max_tries=6,
            durable=True,
            inline_limit=bulk_too_big_inline,
            queue="bulk",
            rate_limits=BULK_EMAIL_COSTS,
        ),
        *AI_JOBS,
        *ANALYTICS_JOBS,
    ],
    schedules=ANALYTICS_SCHEDULES,
    plugins=[AnalyticsIngest],
)


def registry_for(settings: Settings) -> Registry:
    """`REGISTRY` with the jobs of the modules in JOB_MODULES (jobs/extra.py). What the worker,
    the producer, the CLI and the HTTP service use unless given a registry; raises
    `JobModuleError` when a module cannot be loaded or names a job already registered."""
    return _with_modules(settings.job_module_names)


@functools.cache
def _with_modules(names: tuple[str, ...]) -> Registry:
    if not names:
        return REGISTRY
    extra = load_job_modules(names)
    try:
        return REGISTRY.joined(extra)
    except ValueError as exc:  # a name clash
        raise JobModuleError(f"JOB_MODULES: {exc}") from None
