"""Where a job is, from Redis and the Postgres journal: for `python -m worker status` and
`Producer.status()`.

One of: spooled, queued, deferred, in_progress, complete, failed, dead (failed and kept in the
dead-letter store for ops), not_found, or unknown (Redis unreachable and nothing in Postgres).
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from arq.jobs import Job, JobStatus

from worker.journal import Journal
from worker.redis_link import REDIS_ERRORS, RedisLink
from worker.serializer import deserialize, error_from_payload
from worker.spool import PG_DOWN_ERRORS

__all__ = ["job_status"]

log = structlog.get_logger("worker.status")


async def job_status(
    link: RedisLink, job_id: str, queue: str, journal: Journal | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = {"job_id": job_id, "status": "unknown"}
    journal_rows = await _journal_rows(journal, job_id) if journal is not None else {}
    if "spool" in journal_rows:
        row = journal_rows["spool"]
        return {**report, "status": "spooled", "job": row["job_name"], "run_at": row["run_at"].isoformat()}
    if link.usable:
        try:
            report = await _redis_status(link, job_id, queue)
        except REDIS_ERRORS as exc:
            log.warning(
                "could not read job status from Redis", job_id=job_id, error=f"{type(exc).__name__}: {exc}"
            )
            report = {"job_id": job_id, "status": "unknown"}
    if report["status"] in ("failed", "not_found", "unknown") and "dead" in journal_rows:
        row = journal_rows["dead"]
        return {
            **report,
            "status": "dead",
            "job": row["job_name"],
            "mode": row["mode"],
            "tries": row["tries"],
            "failed_at": row["failed_at"].isoformat(),
            "error": orjson.loads(row["error"]),
        }
    if report["status"] in ("not_found", "unknown") and "inline" in journal_rows:
        row = journal_rows["inline"]
        outcome = (
            {"result": orjson.loads(row["result"])}
            if row["success"]
            else {"error": orjson.loads(row["error"])}
        )
        return {
            "job_id": job_id,
            "status": "complete" if row["success"] else "failed",
            "job": row["job_name"],
            "mode": "inline",
            "tries": row["tries"],
            "finished_at": row["finished_at"].isoformat(),
            **outcome,
        }
    return report


async def _journal_rows(journal: Journal, job_id: str) -> dict[str, Any]:
    try:
        pool = await journal.pool()
        async with pool.acquire() as conn:
            found = {
                "spool": await conn.fetchrow(
                    "SELECT job_name, run_at FROM job_spool WHERE job_id = $1", job_id
                ),
                "dead": await conn.fetchrow("SELECT * FROM dead_letters WHERE job_id = $1", job_id),
                "inline": await conn.fetchrow("SELECT * FROM inline_outcomes WHERE job_id = $1", job_id),
            }
    except PG_DOWN_ERRORS:
        return {}
    return {name: row for name, row in found.items() if row is not None}


async def _redis_status(link: RedisLink, job_id: str, queue: str) -> dict[str, Any]:
    job = Job(job_id, link.redis, _queue_name=queue, _deserializer=deserialize)
    status = await job.status()
    report: dict[str, Any] = {"job_id": job_id, "status": status.value}
    if status is JobStatus.complete:
        info = await job.result_info()
        if info is not None:
            report.update(
                status="complete" if info.success else "failed",
                job=info.function,
                mode="queued",
                tries=info.job_try,
                enqueued_at=info.enqueue_time.isoformat(),
                started_at=info.start_time.isoformat(),
                finished_at=info.finish_time.isoformat(),
            )
            if info.success:
                report["result"] = info.result
            else:
                report["error"] = error_from_payload(info.result) or {
                    "type": "Error",
                    "message": str(info.result),
                }
    elif status is not JobStatus.not_found:
        definition = await job.info()
        if definition is not None:
            report.update(job=definition.function, enqueued_at=definition.enqueue_time.isoformat())
            if definition.score:
                report["scheduled_for_ms"] = definition.score
    return report
