"""Daily totals per artist, track, source and event type, recomputed from the raw events.

A day's totals are always computed from all of that day's events and written with an upsert
that replaces the old figures, so running the rollup twice gives the same numbers. Which days
to recompute comes from `analytics_dirty_days`, marked by every flush that stored an event of
that day (late events included).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from jobs.context import JobContext
from jobs.deps import POSTGRES

__all__ = ["day_bounds", "rollup_analytics", "rollup_days"]

# Rollups run one at a time: an older snapshot must never overwrite a newer day's totals.
_ROLLUP_LOCK = 0x4D42_414E  # "MBAN"

_TAKE_DIRTY = "DELETE FROM analytics_dirty_days RETURNING day"
_CLEAR_DIRTY = "DELETE FROM analytics_dirty_days WHERE day = ANY($1::date[])"
_UPSERT_DAY = """
INSERT INTO analytics_daily AS d (
    day, artist_id, track_id, source, event_type, events, quantity, amount_cents, updated_at
)
SELECT $1::date, artist_id, coalesce(track_id, ''), source, event_type,
       count(*), sum(quantity), sum(amount_cents), now()
FROM analytics_events
WHERE occurred_at >= $2 AND occurred_at < $3
GROUP BY artist_id, coalesce(track_id, ''), source, event_type
ON CONFLICT (day, artist_id, track_id, source, event_type) DO UPDATE
SET events = EXCLUDED.events, quantity = EXCLUDED.quantity,
    amount_cents = EXCLUDED.amount_cents, updated_at = EXCLUDED.updated_at
WHERE (d.events, d.quantity, d.amount_cents)
      IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.quantity, EXCLUDED.amount_cents)
"""


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


async def rollup_days(pool: asyncpg.Pool, days: Sequence[date] | None = None) -> tuple[list[date], int]:
    """Recompute `days` (default: the marked ones); return the days and the rows changed."""
    changed = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROLLUP_LOCK)
        if days is None:
            todo = sorted(row["day"] for row in await conn.fetch(_TAKE_DIRTY))
        else:
            todo = sorted(set(days))
            await conn.execute(_CLEAR_DIRTY, todo)
        for day in todo:
            status = await conn.execute(_UPSERT_DAY, day, *day_bounds(day))
            changed += int(status.rsplit(" ", 1)[-1])
    return todo, changed


async def rollup_analytics(ctx: JobContext, *, days: list[date] | None = None) -> dict[str, Any]:
    """Upsert daily analytics totals for the days with new events (or the `days` given)."""
    pool = await ctx.deps.get(POSTGRES)
    done, changed = await rollup_days(pool, days)
    return {"days": [day.isoformat() for day in done], "rows_changed": changed}
