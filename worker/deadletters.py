"""Dead letters for ops: `python -m worker dead list | show ID | retry ID|--all | purge`.

A job that failed permanently or ran out of tries is kept in Postgres with its name, arguments,
error, tries and timestamps, queued and inline alike. Retrying enqueues it again under a new
job id (the old id's failed result may still be in Redis) and removes the dead letter.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from worker.producer import Producer

__all__ = ["list_dead", "purge_dead", "retry_dead", "show_dead"]


def _row(row: asyncpg.Record, *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "job_id": row["job_id"],
        "job": row["job_name"],
        "mode": row["mode"],
        "tries": row["tries"],
        "failed_at": row["failed_at"].isoformat(),
        "error": orjson.loads(row["error"]),
    }
    if full:
        out["args"] = orjson.loads(row["payload"])
        out["enqueued_at"] = row["enqueued_at"].isoformat() if row["enqueued_at"] else None
    return out


async def list_dead(pool: asyncpg.Pool, limit: int = 100) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM dead_letters ORDER BY failed_at DESC LIMIT $1", limit)
    return [_row(r, full=False) for r in rows]


async def show_dead(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT * FROM dead_letters WHERE job_id = $1", job_id)
    return None if row is None else _row(row, full=True)


async def retry_dead(
    pool: asyncpg.Pool, producer: Producer, job_ids: list[str] | None
) -> list[dict[str, Any]]:
    """Enqueue dead jobs again (all of them when `job_ids` is None); report where each went."""
    if job_ids is None:
        rows = await pool.fetch("SELECT * FROM dead_letters ORDER BY failed_at")
    else:
        rows = await pool.fetch("SELECT * FROM dead_letters WHERE job_id = ANY($1::text[])", job_ids)
    report = []
    for row in rows:
        handle = await producer.enqueue_job(row["job_name"], orjson.loads(row["payload"]), background=True)
        await pool.execute("DELETE FROM dead_letters WHERE job_id = $1", row["job_id"])
        report.append({"dead_job_id": row["job_id"], "job_id": handle.job_id, "mode": handle.mode})
    return report


async def purge_dead(pool: asyncpg.Pool, older_than_days: float | None = None) -> int:
    if older_than_days is None:
        status = await pool.execute("DELETE FROM dead_letters")
    else:
        status = await pool.execute(
            "DELETE FROM dead_letters WHERE failed_at < now() - make_interval(secs => $1)",
            older_than_days * 86400,
        )
    return int(status.split()[-1])
