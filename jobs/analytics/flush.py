"""The flush job: buffered analytics events into Postgres, batch by batch.

A producer queues one when events arrive (at most one a second), the worker sweeps every two
hours, and a producer runs it inline to empty its in-process buffer while Redis is down. A
flush that wrote rows queues the rollup. One run drains
until the buffer is empty or ANALYTICS_FLUSH_MAX_S has passed; a run that finds another flush
busy in the same process returns at once.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from core.context import JobContext
from core.deps import POSTGRES
from core.enqueue import ENQUEUE
from core.errors import EnqueueError, JobValidationError
from jobs.analytics.events import EventLimits
from jobs.analytics.queue import EVENT_QUEUE, ClaimedBatch, EventQueue
from jobs.analytics.store import write_chunks

__all__ = ["FLUSH_JOB", "flush_analytics_events"]

# Its registered name, for the plug-in that queues and runs it.
FLUSH_JOB = "flush_analytics_events"


async def _release(ctx: JobContext, queue: EventQueue, batch: ClaimedBatch) -> None:
    # If the buffer is unreachable too, the batch's lease runs out and a later flush recovers it.
    with contextlib.suppress(Exception):
        await queue.release(batch)
        return
    ctx.log.warning("analytics batch not released; it is recovered when its lease ends", batch=batch.batch_id)


async def flush_analytics_events(ctx: JobContext) -> dict[str, Any]:
    """Write buffered analytics events to Postgres; a batch leaves the buffer once committed."""
    queue = await ctx.deps.get(EVENT_QUEUE)
    if queue.lock.locked():
        return {"busy": True}
    async with queue.lock:
        pool = await ctx.deps.get(POSTGRES)
        totals = {"recovered": await queue.recover(), "batches": 0, "events": 0, "inserted": 0, "dead": 0}
        deadline = time.monotonic() + ctx.deps.settings.analytics_flush_max_s
        while time.monotonic() < deadline:
            batch = await queue.claim()
            if batch is None:
                break
            try:
                result = await write_chunks(pool, batch.chunks, _limits(ctx))
            except BaseException:
                await _release(ctx, queue, batch)
                raise
            await queue.ack(batch, dead=result.dead)
            totals["batches"] += 1
            totals["events"] += result.events
            totals["inserted"] += result.inserted
            totals["dead"] += len(result.dead)
    if totals["dead"]:
        ctx.log.error("analytics chunks set aside", chunks=totals["dead"])
    if totals["inserted"]:
        await _queue_rollup(ctx)
    return totals


def _limits(ctx: JobContext) -> EventLimits:
    settings = ctx.deps.settings
    return EventLimits(
        now=datetime.now(UTC),
        max_age=timedelta(seconds=settings.analytics_max_event_age_s),
        max_skew=timedelta(seconds=settings.analytics_max_clock_skew_s),
        max_properties_bytes=settings.analytics_max_properties_bytes,
    )


async def _queue_rollup(ctx: JobContext) -> None:
    """One rollup per five-minute window after rows landed (the two-hourly sweep catches a
    window's last events when no later flush comes)."""
    window = int(time.time() // 300)
    enqueue = await ctx.deps.get(ENQUEUE)
    try:
        await enqueue("rollup_analytics", {}, job_id=f"analytics-rollup:{window}")
    except (JobValidationError, EnqueueError) as exc:  # a registry without rollups, Redis and PG down
        ctx.log.warning("rollup not queued after a flush", error=str(exc))
