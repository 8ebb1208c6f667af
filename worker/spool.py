"""The Postgres spool: jobs that must wait for Redis, and the transactional outbox.

A job lands here when Redis is unusable and its fallback policy is `spool` (or it is deferred),
or when the web app enqueues inside its own database transaction. The relay moves rows to Redis
in order, with their original job ids, and deletes them in the same transaction; rows are
locked with SKIP LOCKED so several relays never deliver one row twice, and a re-delivery after
a crash is absorbed by the enqueue script's job-id deduplication.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from worker.queue_store import EnqueueOutcome, QueueStore
from worker.redis_link import NotSent, RedisLink, ReplyLost

__all__ = ["NOTIFY_CHANNEL", "SpoolRelay", "spool_job"]

log = structlog.get_logger("worker.spool")

NOTIFY_CHANNEL = "mb_job_spool"
_BATCH = 200

# Postgres errors that mean "unreachable right now", as opposed to a bug in our SQL.
PG_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)


async def spool_job(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    job_id: str,
    name: str,
    payload: dict[str, Any],
    queue: str,
    run_at: datetime | None = None,
    durable: bool = False,
) -> bool:
    """Insert one job (in the caller's transaction if `conn` is in one); False if the id exists.

    The NOTIFY is delivered at commit, so a relay picks the job up as soon as it is visible.
    """
    status = await conn.execute(
        "WITH ins AS (INSERT INTO job_spool (job_id, job_name, payload, queue, run_at, durable)"
        " VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING RETURNING 1)"
        " SELECT pg_notify($7, '') FROM ins",
        job_id,
        name,
        orjson.dumps(payload).decode(),
        queue,
        run_at or datetime.now(UTC),
        durable,
        NOTIFY_CHANNEL,
    )
    return status.endswith(" 1")


class SpoolRelay:
    """Forwards spooled jobs to Redis; runs in the worker and in the producer."""

    def __init__(self, pool: asyncpg.Pool, link: RedisLink, *, interval_s: float = 1.0) -> None:
        self._pool = pool
        self._link = link
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self.delivered = 0

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Deliver what is due, oldest first; return how many rows left the spool."""
        if not self._link.usable:
            return 0
        moved = 0
        while True:
            batch = await self._relay_batch()
            moved += batch
            if batch < _BATCH:
                return moved

    async def _relay_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, job_id, job_name, payload, queue, run_at, durable FROM job_spool"
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                _BATCH,
            )
            delivered = []
            for row in rows:
                try:
                    outcome = await self._deliver(row)
                except (NotSent, ReplyLost):
                    break  # this row and the rest stay in the spool for the next round
                delivered.append(row)
                if outcome is EnqueueOutcome.DUPLICATE:
                    log.info("spooled job was already in Redis", job_id=row["job_id"])
            if delivered:
                await conn.execute(
                    "DELETE FROM job_spool WHERE seq = ANY($1::bigint[])", [r["seq"] for r in delivered]
                )
                await conn.executemany(
                    "INSERT INTO durable_jobs (job_id, job_name, payload, queue, run_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id) DO NOTHING",
                    [(r["job_id"], r["job_name"], r["payload"], r["queue"], r["run_at"]) for r in delivered
                     if r["durable"]],
                )  # fmt: skip
        self.delivered += len(delivered)
        if delivered:
            log.info("spooled jobs relayed to Redis", count=len(delivered))
        return len(delivered)

    async def _deliver(self, row: asyncpg.Record) -> EnqueueOutcome:
        delay = (row["run_at"] - datetime.now(UTC)) / timedelta(seconds=1)
        store = QueueStore(self._link, row["queue"])
        return await store.enqueue(
            job_id=row["job_id"],
            name=row["job_name"],
            payload=orjson.loads(row["payload"]),
            defer_by_s=max(delay, 0.0) or None,
        )

    async def run_forever(self) -> None:
        """Relay on NOTIFY, when woken (Redis came back), and at least every `interval_s`."""
        while True:
            try:
                async with self._pool.acquire() as listener:
                    await listener.add_listener(NOTIFY_CHANNEL, self._notified)
                    try:
                        await self._relay_until_error()
                    finally:
                        with contextlib.suppress(*PG_DOWN_ERRORS):
                            await listener.remove_listener(NOTIFY_CHANNEL, self._notified)
            except PG_DOWN_ERRORS as exc:
                log.warning("spool relay cannot reach Postgres", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._interval_s * 5)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _relay_until_error(self) -> None:
        while True:
            await self.relay_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
