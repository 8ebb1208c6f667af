"""Writing event chunks to Postgres: COPY into a temporary table, then one INSERT that skips
event ids already stored and marks the days whose totals must be recomputed.

Both happen in one transaction, so a batch is stored whole or not at all and a retried batch
adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog

from jobs.analytics.events import ROW_COLUMNS, WIRE_VERSION, EventLimits, decode_chunk, row_problem

__all__ = ["WriteResult", "write_chunks", "write_rows"]

log = structlog.get_logger(__name__)

_STAGING = "analytics_events_staging"
# Lives as long as the pooled connection; ON COMMIT DELETE ROWS empties it after each batch.
_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS analytics_events_staging (
    event_id text COLLATE "C", event_type text, artist_id text, track_id text, source text,
    occurred_us bigint, quantity integer, amount_cents bigint, properties text
) ON COMMIT DELETE ROWS
"""
# A day already marked gets its version bumped, so a rollup that read the mark before this
# commit leaves it in place and the day is recomputed again: no event is left out of a total.
_MERGE = """
WITH inserted AS (
    INSERT INTO analytics_events (
        event_id, event_type, artist_id, track_id, source, occurred_at, quantity, amount_cents, properties
    )
    SELECT event_id, event_type, artist_id, track_id, source,
           timestamptz 'epoch' + occurred_us * interval '1 microsecond',
           quantity, amount_cents, properties::jsonb
    FROM analytics_events_staging
    ON CONFLICT (event_id) DO NOTHING
    RETURNING occurred_at
), marked AS (
    INSERT INTO analytics_dirty_days (day)
    SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date FROM inserted ORDER BY 1
    ON CONFLICT (day) DO UPDATE
    SET version = analytics_dirty_days.version + 1, marked_at = now()
)
SELECT count(*) FROM inserted
"""

# Rows that Postgres or the COPY encoder refuse: retrying cannot help, so the chunk is set aside.
_BAD_DATA: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,  # includes asyncpg's client-side DataError
    OverflowError,
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)


@dataclass(slots=True)
class WriteResult:
    events: int = 0  # rows in the chunks that could be read
    inserted: int = 0  # rows new to the table; the rest were already stored
    dead: list[bytes] = field(default_factory=list)


async def write_rows(pool: asyncpg.Pool, rows: Sequence[Sequence[Any]]) -> int:
    """Store rows in `ROW_COLUMNS` order in one transaction; return how many were new."""
    if not rows:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_CREATE_STAGING)
        await conn.copy_records_to_table(_STAGING, records=rows, columns=ROW_COLUMNS)
        inserted: int = await conn.fetchval(_MERGE)
        return inserted


async def write_chunks(pool: asyncpg.Pool, chunks: Sequence[bytes], limits: EventLimits) -> WriteResult:
    """Store every event of `chunks`; chunks that cannot be read or stored, and rows that are
    not events our producer would have accepted (pushed straight to Redis, say), end up in
    `dead`."""
    result = WriteResult()
    readable: list[tuple[bytes, list[list[Any]]]] = []
    for raw in chunks:
        try:
            rows = decode_chunk(raw)
        except ValueError as exc:
            log.error("analytics chunk unreadable, set aside", bytes=len(raw), error=str(exc))
            result.dead.append(raw)
            continue
        problems = [row_problem(row, limits) for row in rows]
        bad = [row for row, problem in zip(rows, problems, strict=True) if problem is not None]
        if bad:
            first = next(p for p in problems if p is not None)
            log.error("analytics events refused at storage, set aside", events=len(bad), first=first)
            result.dead.append(orjson.dumps([WIRE_VERSION, bad]))
            rows = [row for row, problem in zip(rows, problems, strict=True) if problem is None]
            raw = orjson.dumps([WIRE_VERSION, rows])
        readable.append((raw, rows))
    rows = [row for _, chunk_rows in readable for row in chunk_rows]
    try:
        result.inserted = await write_rows(pool, rows)
        result.events = len(rows)
        return result
    except _BAD_DATA as exc:
        log.warning("analytics batch refused, storing chunk by chunk", error=f"{type(exc).__name__}: {exc}")
    # Find the bad chunk(s): the rest of the batch must still be stored.
    for raw, chunk_rows in readable:
        try:
            result.inserted += await write_rows(pool, chunk_rows)
            result.events += len(chunk_rows)
        except _BAD_DATA as exc:
            log.error(
                "analytics chunk refused by Postgres, set aside",
                events=len(chunk_rows),
                error=f"{type(exc).__name__}: {exc}",
            )
            result.dead.append(raw)
    return result
