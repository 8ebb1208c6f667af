"""Schedules: a run missed while no worker was up, or while Redis was away, is run late once."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from core import JobContext, Registry, Schedule, define
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis
from worker.backend import keys
from worker.engine import WorkerService
from worker.engine.scheduler import latest_run

RAN: list[str] = []


async def tick(ctx: JobContext) -> None:
    """Records which scheduled run this was."""
    RAN.append(ctx.job_id)


async def tock(ctx: JobContext) -> None:
    """Same, for a schedule that does not catch up."""
    RAN.append(ctx.job_id)


@pytest.fixture(autouse=True)
def _clear_ran() -> Iterator[None]:
    RAN.clear()
    yield
    RAN.clear()


async def _run_worker_for(settings: Settings, registry: Registry, seconds: float) -> None:
    service = WorkerService(settings, registry=registry, handle_signals=False)
    task = asyncio.create_task(service.run())
    await asyncio.sleep(seconds)
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


def test_latest_run_walks_back_within_the_window() -> None:
    weekly = Schedule("tick", weekday=0, hour=7, minute=0, second=0)
    wednesday = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    monday_7 = datetime(2026, 11, 23, 7, 0, 0, 123_456, tzinfo=UTC)
    assert latest_run(weekly, wednesday, timedelta(days=6)) == monday_7
    assert latest_run(weekly, wednesday, timedelta(days=1)) is None  # too long ago
    with pytest.raises(ValueError, match="catch_up must be positive"):
        Schedule("tick", catch_up=timedelta(0))


async def test_a_run_missed_while_no_worker_was_up_runs_once_at_start(
    redis_server: RedisServer, log_output: io.StringIO
) -> None:
    # Due every minute at a second that passed three seconds ago: the next run is a minute away.
    second = (datetime.now(UTC) - timedelta(seconds=3)).second
    registry = Registry(
        [define(tick), define(tock)],
        schedules=[
            Schedule("tick", second=second, catch_up=timedelta(seconds=30)),
            Schedule("tock", second=second),
        ],
    )
    settings = make_settings(redis_server.url)
    await _run_worker_for(settings, registry, 1.5)
    assert len(RAN) == 1
    assert RAN[0].startswith("cron:tick:")

    # The run's result expires (here: is deleted); a restarted worker still knows it was queued.
    assert await raw_redis(settings).delete(keys.result_key(RAN[0])) == 1
    await _run_worker_for(settings, registry, 1.5)
    assert len(RAN) == 1
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    assert [line["job"] for line in lines if line["event"] == "queueing a missed scheduled run"] == ["tick"]


async def test_a_run_missed_while_redis_was_away_runs_when_it_returns(own_redis: RedisServer) -> None:
    registry = Registry(
        [define(tick)],
        schedules=[Schedule("tick", second=frozenset(range(0, 60, 2)), catch_up=timedelta(seconds=30))],
    )
    settings = make_settings(own_redis.url)
    service = WorkerService(settings, registry=registry, handle_signals=False)
    task = asyncio.create_task(service.run())
    try:
        await eventually(lambda: len(RAN) >= 2, what="two runs before the outage")
        killed_at = time.time()
        own_redis.kill()
        await asyncio.sleep(2.2)  # at least one run falls due while Redis is away
        own_redis.restart()
        back_at = time.time()
        started = len(RAN)
        await eventually(lambda: len(RAN) >= started + 3, timeout=15, what="three runs after the outage")
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 10)
    due = {int(job_id.rsplit(":", 1)[1]) for job_id in RAN}
    # The latest run that fell due while Redis was away was queued late; without catch-up it
    # would never run, as the next regular run comes after Redis is back.
    in_outage = [
        t
        for t in range(int(killed_at) - 2, int(back_at) + 1)
        if t % 2 == 0 and killed_at < t + 0.123 < back_at
    ]
    assert in_outage, (killed_at, back_at)
    assert max(in_outage) in due, (sorted(due), in_outage)
