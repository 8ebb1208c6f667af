"""Bounded reads of the bookkeeping tables for the ops dashboard: pages and counts that stay
cheap however large a table grows (a spool filled by a long outage, 100,000 dead letters).

Counts stop at a cap and say so (`BoundedCount.capped`), pages are index scans of one page, and
nothing here writes. Raise `PG_DOWN_ERRORS` when Postgres is unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.ledger.ledger import DeadLetter, Ledger, SpooledJob, _dead_letter, _spooled

__all__ = [
    "BoundedCount",
    "InlineCounts",
    "SpoolSummary",
    "dead_letter_count",
    "dead_letter_page",
    "inline_counts_since",
    "spool_page",
    "spool_summary",
]


@dataclass(frozen=True, slots=True)
class BoundedCount:
    count: int
    capped: bool  # True: there are at least `count` rows (counting stopped there)


@dataclass(frozen=True, slots=True)
class SpoolSummary:
    backlog: BoundedCount
    oldest_created_at: datetime | None  # the row the relay takes next


@dataclass(frozen=True, slots=True)
class InlineCounts:
    complete: int
    failed: int
    capped: bool


async def spool_summary(ledger: Ledger, *, cap: int = 100_000) -> SpoolSummary:
    pool = await ledger.pool()
    count = await pool.fetchval("SELECT count(*) FROM (SELECT 1 FROM job_spool LIMIT $1) s", cap + 1)
    oldest = await pool.fetchval("SELECT created_at FROM job_spool ORDER BY seq LIMIT 1")
    return SpoolSummary(BoundedCount(min(int(count), cap), int(count) > cap), oldest)


async def spool_page(
    ledger: Ledger, *, job_name: str | None = None, offset: int, limit: int
) -> list[SpooledJob]:
    """In relay order, optionally of one job."""
    rows = await (await ledger.pool()).fetch(
        "SELECT seq, job_id, job_name, payload, queue, run_at, durable, traceparent FROM job_spool"
        " WHERE $1::text IS NULL OR job_name = $1 ORDER BY seq OFFSET $2 LIMIT $3",
        job_name,
        offset,
        limit,
    )
    return [_spooled(r) for r in rows]


async def dead_letter_count(
    ledger: Ledger, *, job_name: str | None = None, cap: int = 1_000_000
) -> BoundedCount:
    count = await (await ledger.pool()).fetchval(
        "SELECT count(*) FROM"
        " (SELECT 1 FROM dead_letters WHERE $1::text IS NULL OR job_name = $1 LIMIT $2) s",
        job_name,
        cap + 1,
    )
    return BoundedCount(min(int(count), cap), int(count) > cap)


async def dead_letter_page(
    ledger: Ledger, *, job_name: str | None = None, offset: int, limit: int
) -> list[DeadLetter]:
    """The newest first (by the failed_at index), optionally of one job."""
    rows = await (await ledger.pool()).fetch(
        "SELECT * FROM dead_letters WHERE $1::text IS NULL OR job_name = $1"
        " ORDER BY failed_at DESC OFFSET $2 LIMIT $3",
        job_name,
        offset,
        limit,
    )
    return [_dead_letter(r) for r in rows]


async def inline_counts_since(ledger: Ledger, since: datetime, *, cap: int = 100_000) -> InlineCounts:
    """Inline runs that finished after `since` (by the finished_at index), counted up to `cap`."""
    row = await (await ledger.pool()).fetchrow(
        "SELECT count(*) FILTER (WHERE success) AS complete, count(*) FILTER (WHERE NOT success) AS failed"
        " FROM (SELECT success FROM inline_outcomes WHERE finished_at > $1 LIMIT $2) s",
        since,
        cap + 1,
    )
    complete, failed = (int(row["complete"]), int(row["failed"])) if row is not None else (0, 0)
    return InlineCounts(complete, failed, complete + failed > cap)
