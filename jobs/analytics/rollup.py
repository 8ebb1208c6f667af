"""Daily totals per artist, track, source and event type, recomputed from the raw events.

A day's totals are always computed from all of that day's events and written with an upsert
that replaces the old figures, so running the rollup twice gives the same numbers. Which days
to recompute comes from `analytics_dirty_days`, marked by every flush that stored an event of
that day (late events included).

Each day is one statement (one snapshot), with no lock held that a flush would wait for. A
day's mark is then deleted only if its version is unchanged: a flush that committed meanwhile
bumped it, so the day stays marked for the next run. Runs are serialized by an advisory lock,
so an older snapshot never overwrites a newer day's totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from core.context import JobContext
from core.deps import POSTGRES

__all__ = ["day_bounds", "rollup_analytics", "rollup_days"]

_ROLLUP_LOCK = 0x4D42_414E  # "MBAN"

_MARKS = "SELECT day, version FROM analytics_dirty_days"
_CLEAR_MARK = "DELETE FROM analytics_dirty_days WHERE day = $1 AND version = $2"
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
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _ROLLUP_LOCK)
        try:
            marks = {row["day"]: row["version"] for row in await conn.fetch(_MARKS)}
            todo = sorted(marks if days is None else set(days))
            for day in todo:
                status = await conn.execute(_UPSERT_DAY, day, *day_bounds(day))
                changed += int(status.rsplit(" ", 1)[-1])
                if day in marks:
                    await conn.execute(_CLEAR_MARK, day, marks[day])
        finally:
            # If this fails the pool's reset on release unlocks (pg_advisory_unlock_all).
            await conn.execute("SELECT pg_advisory_unlock($1)", _ROLLUP_LOCK)
    return todo, changed


async def rollup_analytics(ctx: JobContext, *, days: list[date] | None = None) -> dict[str, Any]:
    """Upsert daily analytics totals for the days with new events (or the `days` given)."""
    pool = await ctx.deps.get(POSTGRES)
    done, changed = await rollup_days(pool, days)
    return {"days": [day.isoformat() for day in done], "rows_changed": changed}
