"""What the runner writes down in Postgres about jobs: dead letters, inline outcomes, durable records.

Bookkeeping never fails a job: when Postgres is unreachable the journal logs what it could not
record and carries on (the job's outcome is still in Redis, or was returned to the caller).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from jobs.deps import POSTGRES, Deps
from worker.spool import PG_DOWN_ERRORS

__all__ = ["Journal"]

log = structlog.get_logger("worker.journal")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


_RETRY_PG_AFTER_S = 5.0
# A database without our tables will not grow them by itself: look again after a minute.
_RETRY_SCHEMA_AFTER_S = 60.0
_SCHEMA_MISSING = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)
_MIGRATE_FIX = "run `python -m worker migrate` (a worker also applies migrations when it starts)"


class Journal:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        # A small breaker: a dead Postgres, or one without our tables, costs one query per
        # back-off instead of a failing query per job.
        self._pg_down_until = 0.0
        self._down_reason = ""
        self._pending: set[asyncio.Task[bool]] = set()

    async def pool(self) -> asyncpg.Pool:
        return await self._deps.get(POSTGRES)

    async def _execute(self, what: str, job_id: str, query: str, *args: Any) -> bool:
        if time.monotonic() < self._pg_down_until:
            # Still one line per record not written, so nothing goes unrecorded silently.
            log.error(f"could not record {what}: {self._down_reason}", job_id=job_id)
            return False
        try:
            async with asyncio.timeout(_RETRY_PG_AFTER_S):
                pool = await self.pool()
                await pool.execute(query, *args)
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
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def dead_letter(
        self,
        *,
        job_id: str,
        name: str,
        payload: dict[str, Any],
        error: dict[str, Any],
        tries: int,
        mode: str,
        enqueue_time: datetime | None,
    ) -> bool:
        return await self._execute(
            "dead letter",
            job_id,
            "INSERT INTO dead_letters (job_id, job_name, payload, error, tries, mode, enqueued_at)"
            " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7)"
            " ON CONFLICT (job_id) DO UPDATE SET error = EXCLUDED.error, tries = EXCLUDED.tries,"
            " mode = EXCLUDED.mode, failed_at = now()",
            job_id, name, _json(payload), _json(error), tries, mode, enqueue_time,
        )  # fmt: skip

    async def inline_outcome(
        self, *, job_id: str, name: str, result: Any, error: dict[str, Any] | None, tries: int
    ) -> bool:
        return await self._execute(
            "inline outcome",
            job_id,
            "INSERT INTO inline_outcomes (job_id, job_name, success, result, error, tries)"
            " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) ON CONFLICT (job_id) DO UPDATE SET"
            " success = EXCLUDED.success, result = EXCLUDED.result, error = EXCLUDED.error,"
            " tries = EXCLUDED.tries, finished_at = now()",
            job_id, name, error is None, _json(result), _json(error) if error else None, tries,
        )  # fmt: skip

    async def durable_recorded(
        self, *, job_id: str, name: str, payload: dict[str, Any], queue: str, run_at: datetime | None = None
    ) -> bool:
        return await self._execute(
            "durable job",
            job_id,
            "INSERT INTO durable_jobs (job_id, job_name, payload, queue, run_at)"
            " VALUES ($1, $2, $3::jsonb, $4, $5) ON CONFLICT (job_id) DO NOTHING",
            job_id, name, _json(payload), queue, run_at or datetime.now(UTC),
        )  # fmt: skip

    async def durable_done(self, job_id: str) -> bool:
        return await self._execute(
            "durable completion", job_id, "DELETE FROM durable_jobs WHERE job_id = $1", job_id
        )
