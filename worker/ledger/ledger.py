"""The ledger: the one owner of the runner's bookkeeping tables in Postgres.

- `job_spool`: jobs waiting for the queue backend (Redis down, a deferred job, the outbox); the
  relay moves them out in order.
- `durable_jobs`: durable jobs from before they are queued until they finish; the reconciler
  re-enqueues those the backend lost. A durable job that falls back to running inline holds an
  inline lease on its row so the reconciler leaves it alone, and its final outcome settles the
  row: it never runs a second time because the backend forgot it.
- `dead_letters`: jobs that failed for good, queued or inline.
- `inline_outcomes`: the outcome of jobs that ran inline (for `status`).

Bookkeeping never fails a job: when Postgres is unreachable, or has no runner tables, a write
is logged as not recorded and the caller carries on. A small breaker makes a dead Postgres cost
one attempt per back-off instead of a failing query per job. Reads for ops raise `PG_DOWN_ERRORS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from core.deps import POSTGRES, Deps

__all__ = [
    "NOTIFY_CHANNEL",
    "PG_DOWN_ERRORS",
    "DeadLetter",
    "DurableRecord",
    "InlineOutcome",
    "Ledger",
    "SpooledJob",
]

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "mb_job_spool"

# Postgres errors that mean "unreachable right now", as opposed to a bug in our SQL.
PG_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)

_RETRY_PG_AFTER_S = 5.0
# A database without our tables will not grow them by itself: look again after a minute.
_RETRY_SCHEMA_AFTER_S = 60.0
_SCHEMA_MISSING = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)
_MIGRATE_FIX = "run `python -m worker migrate` (a worker also applies migrations when it starts)"


def _json(value: Any) -> str:
    text = orjson.dumps(value).decode()
    # jsonb cannot hold NUL. Payloads are refused at enqueue when they carry one, but an error
    # message or a forged entry may: it is stored with the NUL spelled out rather than lost.
    return orjson.dumps(_without_nul(value)).decode() if "\\u0000" in text else text


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _seconds_until(run_at: datetime) -> float | None:
    """How long until `run_at`, or None when it is due."""
    delay = (run_at - datetime.now(UTC)) / timedelta(seconds=1)
    return delay if delay > 0 else None


@dataclass(frozen=True, slots=True)
class SpooledJob:
    seq: int
    job_id: str
    name: str
    kwargs: dict[str, Any]
    queue: str
    run_at: datetime
    durable: bool
    traceparent: str | None = None

    @property
    def defer_by_s(self) -> float | None:
        return _seconds_until(self.run_at)


@dataclass(frozen=True, slots=True)
class DurableRecord:
    job_id: str
    name: str
    kwargs: dict[str, Any]
    queue: str
    run_at: datetime
    traceparent: str | None = None

    @property
    def defer_by_s(self) -> float | None:
        return _seconds_until(self.run_at)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job_id: str
    name: str
    kwargs: dict[str, Any]
    error: dict[str, Any]
    tries: int
    mode: str
    enqueued_at: datetime | None
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class InlineOutcome:
    job_id: str
    name: str
    success: bool
    result: Any
    error: dict[str, Any] | None
    tries: int
    finished_at: datetime


def _spooled(row: asyncpg.Record) -> SpooledJob:
    return SpooledJob(
        row["seq"], row["job_id"], row["job_name"], orjson.loads(row["payload"]),
        row["queue"], row["run_at"], row["durable"], row["traceparent"],
    )  # fmt: skip


def _dead_letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        job_id=row["job_id"],
        name=row["job_name"],
        kwargs=orjson.loads(row["payload"]),
        error=orjson.loads(row["error"]),
        tries=row["tries"],
        mode=row["mode"],
        enqueued_at=row["enqueued_at"],
        failed_at=row["failed_at"],
    )


class Ledger:
    """Bookkeeping over the process's Postgres pool (the `POSTGRES` resource of its `Deps`)."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pg_down_until = 0.0
        self._down_reason = ""
        self._pending: set[asyncio.Task[bool]] = set()

    async def pool(self) -> asyncpg.Pool:
        return await self._deps.get(POSTGRES)

    # -- best-effort writes ------------------------------------------------------------------

    async def _record(
        self, what: str, job_id: str, write: Callable[[asyncpg.Pool], Awaitable[object]]
    ) -> bool:
        if time.monotonic() < self._pg_down_until:
            # Still one line per record not written, so nothing goes unrecorded silently.
            log.error(f"could not record {what}: {self._down_reason}", job_id=job_id)
            return False
        try:
            async with asyncio.timeout(_RETRY_PG_AFTER_S):
                await write(await self.pool())
        except PG_DOWN_ERRORS as exc:
            self._pg_down_until = time.monotonic() + _RETRY_PG_AFTER_S
            self._down_reason = "Postgres unreachable"
            log.error(
                f"could not record {what}: Postgres unreachable",
                job_id=job_id,
                error=str(exc),
                next_try_in_s=_RETRY_PG_AFTER_S,
            )
            return False
        except _SCHEMA_MISSING as exc:
            self._pg_down_until = time.monotonic() + _RETRY_SCHEMA_AFTER_S
            self._down_reason = f"the database has no runner tables; {_MIGRATE_FIX}"
            log.error(
                f"could not record {what}: the database has no runner tables",
                job_id=job_id,
                error=f"{type(exc).__name__}: {exc}",
                fix=_MIGRATE_FIX,
                next_try_in_s=_RETRY_SCHEMA_AFTER_S,
            )
            return False
        except asyncpg.PostgresError as exc:
            # Bookkeeping trouble must not turn into a job failure.
            log.error(f"could not record {what}", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def in_background(self, write: Coroutine[Any, Any, bool]) -> None:
        """Record without making the caller wait (inline runs sit in a web request)."""
        task = asyncio.ensure_future(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for background writes."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def dead_letter(
        self,
        *,
        job_id: str,
        name: str,
        kwargs: dict[str, Any],
        error: dict[str, Any],
        tries: int,
        mode: str,
        enqueue_time: datetime | None,
    ) -> bool:
        async def write(pool: asyncpg.Pool) -> None:
            await pool.execute(
                "INSERT INTO dead_letters (job_id, job_name, payload, error, tries, mode, enqueued_at)"
                " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7)"
                " ON CONFLICT (job_id) DO UPDATE SET error = EXCLUDED.error, tries = EXCLUDED.tries,"
                " mode = EXCLUDED.mode, failed_at = now()",
                job_id, name, _json(kwargs), _json(error), tries, mode, enqueue_time,
            )  # fmt: skip

        return await self._record("dead letter", job_id, write)

    async def inline_finished(
        self,
        *,
        job_id: str,
        name: str,
        result: Any,
        error: dict[str, Any] | None,
        tries: int,
        kwargs: dict[str, Any],
        durable: bool,
        dead_letter: bool = True,
    ) -> bool:
        """An inline run's final outcome: kept for `status`, dead-lettered when it failed (not
        when it was cancelled), and a durable job's row settled, all in one transaction."""

        async def write(pool: asyncpg.Pool) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO inline_outcomes (job_id, job_name, success, result, error, tries)"
                    " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) ON CONFLICT (job_id) DO UPDATE SET"
                    " success = EXCLUDED.success, result = EXCLUDED.result, error = EXCLUDED.error,"
                    " tries = EXCLUDED.tries, finished_at = now()",
                    job_id, name, error is None, _json(result), _json(error) if error else None, tries,
                )  # fmt: skip
                if error is not None and dead_letter:
                    await conn.execute(
                        "INSERT INTO dead_letters (job_id, job_name, payload, error, tries, mode)"
                        " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, 'inline')"
                        " ON CONFLICT (job_id) DO UPDATE SET error = EXCLUDED.error, tries = EXCLUDED.tries,"
                        " mode = EXCLUDED.mode, failed_at = now()",
                        job_id, name, _json(kwargs), _json(error), tries,
                    )  # fmt: skip
                if durable:
                    await conn.execute("DELETE FROM durable_jobs WHERE job_id = $1", job_id)

        return await self._record("inline outcome", job_id, write)

    async def durable_recorded(
        self,
        *,
        job_id: str,
        name: str,
        kwargs: dict[str, Any],
        queue: str,
        run_at: datetime | None = None,
        traceparent: str | None = None,
    ) -> bool:
        async def write(pool: asyncpg.Pool) -> None:
            await pool.execute(
                "INSERT INTO durable_jobs (job_id, job_name, payload, queue, run_at, traceparent)"
                " VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
                job_id, name, _json(kwargs), queue, run_at or datetime.now(UTC), traceparent,
            )  # fmt: skip

        return await self._record("durable job", job_id, write)

    async def durable_running_inline(self, job_id: str, *, lease_s: float) -> bool:
        """A durable job is about to run inline: the reconciler must not queue it meanwhile. If
        this process dies mid-run, the lease ends and the reconciler queues it after all."""

        async def write(pool: asyncpg.Pool) -> None:
            await pool.execute(
                "UPDATE durable_jobs SET inline_until = now() + make_interval(secs => $2) WHERE job_id = $1",
                job_id,
                lease_s,
            )

        return await self._record("durable inline lease", job_id, write)

    async def durable_done(self, job_id: str) -> bool:
        async def write(pool: asyncpg.Pool) -> None:
            await pool.execute("DELETE FROM durable_jobs WHERE job_id = $1", job_id)

        return await self._record("durable completion", job_id, write)

    async def cancel_spooled(self, job_id: str, error: dict[str, Any]) -> bool:
        """Take a job out of the spool, cancelled: kept as an outcome for `status`, its durable
        row settled. False if the spool does not hold it. Raises `PG_DOWN_ERRORS`."""
        async with (await self.pool()).acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM job_spool WHERE job_id = $1 RETURNING job_name", job_id)
            if row is None:
                return False
            await conn.execute(
                "INSERT INTO inline_outcomes (job_id, job_name, success, result, error, tries)"
                " VALUES ($1, $2, false, NULL, $3::jsonb, 0) ON CONFLICT (job_id) DO UPDATE SET"
                " success = false, result = NULL, error = EXCLUDED.error, finished_at = now()",
                job_id, row["job_name"], _json(error),
            )  # fmt: skip
            await conn.execute("DELETE FROM durable_jobs WHERE job_id = $1", job_id)
        return True

    # -- the spool ---------------------------------------------------------------------------

    async def spool(
        self,
        conn: asyncpg.Connection | asyncpg.Pool | None,
        *,
        job_id: str,
        name: str,
        kwargs: dict[str, Any],
        queue: str,
        run_at: datetime | None = None,
        durable: bool = False,
        traceparent: str | None = None,
    ) -> bool:
        """Insert one job (in the caller's transaction when `conn` is in one; the process's pool
        when None); False if the id is already spooled. Raises `PG_DOWN_ERRORS`.

        The NOTIFY is delivered at commit, so a relay picks the job up as soon as it is visible.
        """
        target = conn if conn is not None else await self.pool()
        # Named with its schema: the caller's own connection has the web app's search path.
        spool_table = f'"{self._deps.settings.database_schema}".job_spool'
        status = await target.execute(
            f"WITH ins AS (INSERT INTO {spool_table}"  # noqa: S608 - a validated schema name
            " (job_id, job_name, payload, queue, run_at, durable, traceparent)"
            " VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7) ON CONFLICT (job_id) DO NOTHING RETURNING 1)"
            " SELECT pg_notify($8, '') FROM ins",
            job_id,
            name,
            _json(kwargs),
            queue,
            run_at or datetime.now(UTC),
            durable,
            traceparent,
            NOTIFY_CHANNEL,
        )
        return str(status).endswith(" 1")

    async def relay_batch(
        self, deliver: Callable[[SpooledJob], Awaitable[bool]], *, limit: int
    ) -> tuple[int, int]:
        """Hand up to `limit` spooled jobs, oldest first, to `deliver`; delete those it took
        (True), recording durable ones, in the same transaction. Stops at the first job it did
        not take. Returns (rows looked at, rows delivered). Rows are locked with SKIP LOCKED,
        so several relays never deliver one twice."""
        async with (await self.pool()).acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, job_id, job_name, payload, queue, run_at, durable, traceparent FROM job_spool"
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            delivered: list[asyncpg.Record] = []
            for row in rows:
                job = _spooled(row)
                if not await deliver(job):
                    break  # this row and the rest stay in the spool for the next round
                delivered.append(row)
            if delivered:
                await conn.execute(
                    "DELETE FROM job_spool WHERE seq = ANY($1::bigint[])", [r["seq"] for r in delivered]
                )
                await conn.executemany(
                    "INSERT INTO durable_jobs (job_id, job_name, payload, queue, run_at, traceparent)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
                    [(r["job_id"], r["job_name"], r["payload"], r["queue"], r["run_at"], r["traceparent"])
                     for r in delivered if r["durable"]],
                )  # fmt: skip
        return len(rows), len(delivered)

    @asynccontextmanager
    async def spool_notifications(self, on_notify: Callable[[], None]) -> AsyncIterator[None]:
        """Call `on_notify` whenever a spooled job commits, while the context is open."""

        def notified(*_: object) -> None:
            on_notify()

        async with (await self.pool()).acquire() as listener:
            await listener.add_listener(NOTIFY_CHANNEL, notified)
            try:
                yield
            finally:
                with contextlib.suppress(*PG_DOWN_ERRORS):
                    await listener.remove_listener(NOTIFY_CHANNEL, notified)

    # -- durable jobs for the reconciler ---------------------------------------------------

    async def durable_to_check(self, *, min_age_s: float, limit: int) -> list[DurableRecord]:
        """Durable records old enough that their enqueue is over and not held by an inline run.

        A record whose job already finished inline is settled here instead of returned."""
        pool = await self.pool()
        await pool.execute("DELETE FROM durable_jobs d USING inline_outcomes i WHERE i.job_id = d.job_id")
        rows = await pool.fetch(
            "SELECT job_id, job_name, payload, queue, run_at, traceparent FROM durable_jobs"
            " WHERE created_at < now() - make_interval(secs => $1)"
            " AND (inline_until IS NULL OR inline_until < now())"
            " ORDER BY created_at LIMIT $2",
            float(min_age_s),
            limit,
        )
        return [
            DurableRecord(
                r["job_id"],
                r["job_name"],
                orjson.loads(r["payload"]),
                r["queue"],
                r["run_at"],
                r["traceparent"],
            )
            for r in rows
        ]

    async def durable_settled(self, job_ids: Sequence[str]) -> None:
        """These durable jobs finished (their results are in the backend)."""
        if job_ids:
            await (await self.pool()).execute(
                "DELETE FROM durable_jobs WHERE job_id = ANY($1::text[])", list(job_ids)
            )

    async def durable_requeued(self, job_id: str) -> None:
        await (await self.pool()).execute(
            "UPDATE durable_jobs SET requeued = requeued + 1 WHERE job_id = $1", job_id
        )

    # -- reads for ops ---------------------------------------------------------------------

    async def spooled(self, job_id: str) -> SpooledJob | None:
        row = await (await self.pool()).fetchrow(
            "SELECT seq, job_id, job_name, payload, queue, run_at, durable, traceparent FROM job_spool"
            " WHERE job_id = $1",
            job_id,
        )
        return None if row is None else _spooled(row)

    async def spool_backlog(self) -> int:
        return int(await (await self.pool()).fetchval("SELECT count(*) FROM job_spool"))

    async def inline_outcome(self, job_id: str) -> InlineOutcome | None:
        row = await (await self.pool()).fetchrow("SELECT * FROM inline_outcomes WHERE job_id = $1", job_id)
        if row is None:
            return None
        return InlineOutcome(
            job_id=row["job_id"],
            name=row["job_name"],
            success=row["success"],
            result=orjson.loads(row["result"]) if row["result"] is not None else None,
            error=orjson.loads(row["error"]) if row["error"] is not None else None,
            tries=row["tries"],
            finished_at=row["finished_at"],
        )

    async def dead_letters(
        self, *, limit: int = 100, job_ids: Sequence[str] | None = None
    ) -> list[DeadLetter]:
        """The newest dead letters first; or exactly those of `job_ids`."""
        pool = await self.pool()
        if job_ids is None:
            rows = await pool.fetch("SELECT * FROM dead_letters ORDER BY failed_at DESC LIMIT $1", limit)
        else:
            rows = await pool.fetch(
                "SELECT * FROM dead_letters WHERE job_id = ANY($1::text[]) ORDER BY failed_at", list(job_ids)
            )
        return [_dead_letter(r) for r in rows]

    async def all_dead_letters(self) -> list[DeadLetter]:
        rows = await (await self.pool()).fetch("SELECT * FROM dead_letters ORDER BY failed_at")
        return [_dead_letter(r) for r in rows]

    async def dead_letter_of(self, job_id: str) -> DeadLetter | None:
        row = await (await self.pool()).fetchrow("SELECT * FROM dead_letters WHERE job_id = $1", job_id)
        return None if row is None else _dead_letter(row)

    async def forget_dead_letter(self, job_id: str) -> None:
        await (await self.pool()).execute("DELETE FROM dead_letters WHERE job_id = $1", job_id)

    async def purge_dead_letters(
        self, *, older_than_days: float | None = None, job_name: str | None = None
    ) -> int:
        """Delete dead letters (all, or those older than `older_than_days` and/or of one job)."""
        status = await (await self.pool()).execute(
            "DELETE FROM dead_letters"
            " WHERE ($1::float8 IS NULL OR failed_at < now() - make_interval(secs => $1))"
            " AND ($2::text IS NULL OR job_name = $2)",
            None if older_than_days is None else older_than_days * 86400,
            job_name,
        )
        return int(str(status).split()[-1])
