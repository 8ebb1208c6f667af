"""The worker pieces analytics needs: schedules as cron jobs, migrations at start and on demand."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from core import Registry, Schedule, define
from devservices.redis import RedisServer
from jobs import REGISTRY, ping
from tests.analytics_fixtures import analytics_settings, start_analytics_worker
from tests.conftest import pg_connect
from worker.engine.scheduler import next_run
from worker.ledger.migrate import apply_migrations, available_migrations
from worker.producer import Producer

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = [m.version for m in available_migrations()]


def test_schedules_fire_when_due_and_bad_ones_are_refused() -> None:
    schedules = {s.job: s for s in REGISTRY.schedules}
    start = datetime(2026, 11, 26, 10, 15, 30, tzinfo=UTC)  # a Thursday
    flush = next_run(schedules["flush_analytics_events"], start)  # a sweep every two hours
    assert flush.replace(microsecond=0) == datetime(2026, 11, 26, 12, 0, 5, tzinfo=UTC)
    weekly = next_run(schedules["send_weekly_insights"], start)
    # Monday 09:00 in New York: 14:00 UTC in winter, 13:00 UTC in summer.
    assert weekly.replace(microsecond=0) == datetime(2026, 11, 30, 14, 0, 0, tzinfo=UTC)
    summer = next_run(schedules["send_weekly_insights"], datetime(2026, 6, 3, tzinfo=UTC))
    assert summer.replace(microsecond=0) == datetime(2026, 6, 8, 13, 0, 0, tzinfo=UTC)

    async def needs_args(ctx: Any, *, artist: str) -> None:
        """Cannot run on a schedule."""

    with pytest.raises(ValueError, match="no such job"):
        Registry([define(ping)], schedules=[Schedule("nope")])
    with pytest.raises(ValueError, match="cannot need arguments"):
        Registry([define(needs_args)], schedules=[Schedule("needs_args")])
    with pytest.raises(ValueError, match="does not divide a minute"):
        Schedule.every_seconds("ping", 7)


async def test_worker_applies_migrations_at_start(redis_server: RedisServer, fresh_database: str) -> None:
    settings = analytics_settings(redis_server.url, fresh_database)
    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings) as producer:
            assert (await (await producer.enqueue(ping)).result(timeout=5))["mode"] == "queued"
    finally:
        await worker.stop()
    conn = await pg_connect(fresh_database)
    try:
        applied = [
            r["version"] for r in await conn.fetch("SELECT version FROM job_runner_migrations ORDER BY 1")
        ]
    finally:
        await conn.close()
    assert applied == VERSIONS


async def test_worker_starts_and_runs_jobs_while_postgres_is_unreachable(
    redis_server: RedisServer, log_output: io.StringIO
) -> None:
    settings = analytics_settings(redis_server.url, "postgresql://postgres@127.0.0.1:1/postgres")
    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings) as producer:
            assert (await (await producer.enqueue(ping)).result(timeout=5))["mode"] == "queued"
    finally:
        assert await worker.stop() == 0
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    warning = next(
        line for line in lines if line["event"] == "postgres unreachable at start, migrations not applied"
    )
    assert warning["level"] == "warning"
    assert "127.0.0.1:1" in str(warning["url"])


async def test_concurrent_migrators_apply_each_version_once(fresh_database: str) -> None:
    conns = [await pg_connect(fresh_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(conn) for conn in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM job_runner_migrations")
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(v for applied in results for v in applied) == VERSIONS
    assert count == len(VERSIONS)


def _cli(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": "", "LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "worker", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_migrate_command_prints_what_it_applied(fresh_database: str) -> None:
    first = _cli(fresh_database)
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout.strip().splitlines()[-1]) == {"applied": VERSIONS, "schema": "jobrunner"}
    again = _cli(fresh_database)
    assert orjson.loads(again.stdout.strip().splitlines()[-1]) == {"applied": [], "schema": "jobrunner"}
    down = _cli("postgresql://postgres@127.0.0.1:1/postgres")
    assert down.returncode == 2
    assert down.stderr.count("\n") == 1, down.stderr  # one line, not a traceback
    assert "DATABASE_URL: cannot connect to Postgres at 127.0.0.1:1" in down.stderr
    missing = _cli(fresh_database.rsplit("/", 1)[0] + "/no_such_db")
    assert missing.returncode == 2
    assert "DATABASE_URL: database 'no_such_db' does not exist" in missing.stderr
    assert "createdb" in missing.stderr
