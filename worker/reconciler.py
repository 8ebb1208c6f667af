"""Re-enqueues durable jobs that Redis lost (a restart without persistence, an eviction).

A durable job is recorded in Postgres before it is queued and deleted when it completes. Every
15 s the reconciler looks at records older than 10 s: one whose result is in Redis is done (its
completion was not recorded), one Redis has no trace of is queued again under the same id, so
a job that is merely waiting or running is never doubled.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import structlog

from worker.queue_store import QueueStore
from worker.redis_link import REDIS_FAILURES, RedisLink
from worker.spool import PG_DOWN_ERRORS

__all__ = ["DurableReconciler"]

log = structlog.get_logger("worker.reconciler")

_MIN_AGE_S = 10
_SKIPPABLE: tuple[type[BaseException], ...] = (*REDIS_FAILURES, *PG_DOWN_ERRORS)
_BATCH = 1000


class DurableReconciler:
    def __init__(self, pool: asyncpg.Pool, link: RedisLink, *, interval_s: float = 15.0) -> None:
        self._pool = pool
        self._link = link
        self._interval_s = interval_s
        self.requeued = 0

    async def reconcile_once(self) -> int:
        """Check one batch of durable records; return how many jobs were queued again."""
        # Younger records may belong to an enqueue still in flight.
        min_age_s = min(_MIN_AGE_S, self._interval_s)
        if not self._link.usable:
            return 0
        rows = await self._pool.fetch(
            "SELECT job_id, job_name, payload, queue, run_at FROM durable_jobs"
            " WHERE created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
            float(min_age_s),
            _BATCH,
        )
        if not rows:
            return 0
        presence = await self._link.presence([r["job_id"] for r in rows])
        done = [r["job_id"] for r, seen in zip(rows, presence, strict=True) if seen == 2]
        lost = [r for r, seen in zip(rows, presence, strict=True) if seen == 0]
        if done:
            await self._pool.execute("DELETE FROM durable_jobs WHERE job_id = ANY($1::text[])", done)
        for row in lost:
            delay = (row["run_at"] - datetime.now(UTC)) / timedelta(seconds=1)
            await QueueStore(self._link, row["queue"]).enqueue(
                job_id=row["job_id"],
                name=row["job_name"],
                payload=orjson.loads(row["payload"]),
                defer_by_s=max(delay, 0.0) or None,
            )
            await self._pool.execute(
                "UPDATE durable_jobs SET requeued = requeued + 1 WHERE job_id = $1", row["job_id"]
            )
            log.warning("durable job lost by Redis, queued again", job_id=row["job_id"], job=row["job_name"])
        self.requeued += len(lost)
        return len(lost)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.reconcile_once()
            except _SKIPPABLE as exc:
                log.warning("durable reconciliation skipped", error=f"{type(exc).__name__}: {exc}")
