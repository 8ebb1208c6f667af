"""Schedules: a run missed while no worker was up, or while Redis was away, is run late once."""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from arq.cron import next_cron

from core import JobContext, Registry, Schedule, define
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis
from worker.backend import keys
from worker.engine import WorkerService
from worker.engine.scheduler import latest_run, next_run
from worker.telemetry import configure_logging

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


NEW_YORK = ZoneInfo("America/New_York")


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _runs(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    out = []
    for _ in range(count):
        after = next_run(schedule, after)
        out.append(after.replace(microsecond=0))
    return out


def test_utc_schedules_run_when_arqs_cron_would() -> None:
    # Our own next_run replaced arq.cron.next_cron; for UTC schedules the times are the same.
    rng = random.Random(17)
    for _ in range(300):
        fields: dict[str, Any] = {
            "month": rng.choice([None, rng.randint(1, 12)]),
            "day": rng.choice([None, None, rng.randint(1, 28)]),
            "weekday": rng.choice([None, rng.randint(0, 6), frozenset({0, 3})]),
            "hour": rng.choice([None, rng.randint(0, 23), frozenset({0, 6, 12, 18})]),
            "minute": rng.choice([None, rng.randint(0, 59), frozenset(range(0, 60, 15))]),
            "second": rng.choice([0, rng.randint(0, 59), frozenset({0, 30})]),
        }
        schedule = Schedule("tick", **fields)
        after = _utc(2026, 1, 1) + timedelta(seconds=rng.randint(0, 400 * 86400))
        expected = next_cron(
            after.replace(tzinfo=None),
            **{k: set(v) if isinstance(v, frozenset) else v for k, v in fields.items()},
            microsecond=123_456,
        )
        assert next_run(schedule, after) == expected.replace(tzinfo=UTC), (fields, after)


def test_monday_nine_in_new_york_across_daylight_saving() -> None:
    weekly = Schedule("tick", weekday=0, hour=9, minute=0, second=0, tz="America/New_York")
    # US daylight saving 2026: from Sunday 8 March to Sunday 1 November.
    assert _runs(weekly, _utc(2026, 2, 28), 3) == [
        _utc(2026, 3, 2, 14),
        _utc(2026, 3, 9, 13),
        _utc(2026, 3, 16, 13),
    ]
    assert _runs(weekly, _utc(2026, 10, 20), 3) == [
        _utc(2026, 10, 26, 13),
        _utc(2026, 11, 2, 14),
        _utc(2026, 11, 9, 14),
    ]
    for due in _runs(weekly, _utc(2026, 1, 1), 60):
        local = due.astimezone(NEW_YORK)
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)


def test_a_time_skipped_by_spring_forward_runs_once_that_day() -> None:
    daily = Schedule("tick", hour=2, minute=30, second=0, tz="America/New_York")
    # 2026-03-08 02:30 does not exist in New York (02:00 EST -> 03:00 EDT): it runs at 03:30 EDT.
    assert _runs(daily, _utc(2026, 3, 7, 12), 3) == [
        _utc(2026, 3, 8, 7, 30),  # 03:30 EDT
        _utc(2026, 3, 9, 6, 30),  # 02:30 EDT
        _utc(2026, 3, 10, 6, 30),
    ]
    every_half_hour = Schedule("tick", minute=frozenset({0, 30}), second=0, tz="America/New_York")
    runs = _runs(every_half_hour, _utc(2026, 3, 8, 6, 15), 4)  # 01:15 EST
    assert runs == [
        _utc(2026, 3, 8, 6, 30),
        _utc(2026, 3, 8, 7),
        _utc(2026, 3, 8, 7, 30),
        _utc(2026, 3, 8, 8),
    ]


def test_a_time_repeated_by_fall_back_runs_once() -> None:
    daily = Schedule("tick", hour=1, minute=30, second=0, tz="America/New_York")
    # 2026-11-01 01:30 happens twice (EDT, then EST): it runs at the first.
    assert _runs(daily, _utc(2026, 10, 31), 3) == [
        _utc(2026, 10, 31, 5, 30),  # 01:30 EDT on the Saturday
        _utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first of the two
        _utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_an_unknown_time_zone_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"unknown time zone 'America/Gotham'; use an IANA name"):
        Schedule("tick", hour=9, tz="America/Gotham")


def test_latest_run_walks_back_within_the_window() -> None:
    weekly = Schedule("tick", weekday=0, hour=7, minute=0, second=0)
    wednesday = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    monday_7 = datetime(2026, 11, 23, 7, 0, 0, 123_456, tzinfo=UTC)
    assert latest_run(weekly, wednesday, timedelta(days=6)) == monday_7
    assert latest_run(weekly, wednesday, timedelta(days=1)) is None  # too long ago
    with pytest.raises(ValueError, match="catch_up must be positive"):
        Schedule("tick", catch_up=timedelta(0))


async def test_a_fresh_worker_on_an_empty_redis_catches_up_nothing(redis_server: RedisServer) -> None:
    # Due every minute at a second that passed three seconds ago, within the catch-up window:
    # but no worker ever ran this schedule on this Redis, so nothing was missed.
    stream = io.StringIO()
    settings = make_settings(redis_server.url, log_level="DEBUG")
    configure_logging(settings, stream=stream)
    second = (datetime.now(UTC) - timedelta(seconds=3)).second
    registry = Registry(
        [define(tick)], schedules=[Schedule("tick", second=second, catch_up=timedelta(seconds=30))]
    )
    await _run_worker_for(settings, registry, 1.5)
    assert RAN == []
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines if line.get("job") == "tick"]
    assert "queueing a missed scheduled run" not in events
    assert "schedule starts on this Redis; runs due before now are not caught up" in events


async def test_a_run_missed_while_no_worker_was_up_runs_once_at_start(
    redis_server: RedisServer, log_output: io.StringIO
) -> None:
    settings = make_settings(redis_server.url)
    due_soon = datetime.now(UTC) + timedelta(seconds=2)
    registry = Registry(
        [define(tick), define(tock)],
        schedules=[
            Schedule("tick", second=due_soon.second, catch_up=timedelta(seconds=30)),
            Schedule("tock", second=due_soon.second),
        ],
    )
    await _run_worker_for(settings, registry, 0.5)  # the fleet's first start: nothing to catch up
    assert RAN == []
    await asyncio.sleep(max(0.0, (due_soon - datetime.now(UTC)).total_seconds()) + 0.5)  # no worker up
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
