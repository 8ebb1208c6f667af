"""Daily rollups and anomaly detection on generated data with known spikes and drops."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from jobs.analytics import detect_analytics_anomalies, rollup_analytics
from jobs.analytics.anomaly import DetectorConfig, scan_series
from jobs.analytics.events import ROW_COLUMNS
from jobs.analytics.rollup import rollup_days
from jobs.analytics.store import write_rows
from settings import Settings
from tests.analytics_fixtures import (
    SENT,
    TEST_ANALYTICS_REGISTRY,
    analytics_settings,
    clean_analytics,
    write_daily_series,
)
from tests.conftest import pg_pool
from worker.producer import Producer

__all__ = ["clean_analytics"]  # fixture used by name below

FIRST = date(2025, 2, 3)  # a Monday
LAST = date(2025, 3, 16)  # a Sunday: six weeks
DAYS = [FIRST + timedelta(days=i) for i in range((LAST - FIRST).days + 1)]
SPIKE_DAY = date(2025, 3, 11)  # a Tuesday
DROP_DAY = date(2025, 3, 8)  # a Saturday, when this artist is usually at its busiest


def _noisy(rng: random.Random, mean: float) -> int:
    """About Poisson(mean): counts of plays are at least this noisy."""
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def _series(
    mean: float, *, seed: int, weekend: float = 1.5, events: dict[date, float] | None = None
) -> dict[date, int]:
    """A daily series with a weekly rhythm; `events` multiplies chosen days (spikes, drops)."""
    rng = random.Random(seed)
    out = {}
    for day in DAYS:
        level = mean * (weekend if day.weekday() >= 5 else 1.0) * (events or {}).get(day, 1.0)
        out[day] = _noisy(rng, level)
    return out


# --- the scoring itself -------------------------------------------------------------------------


def test_weekly_rhythm_is_normal_and_spikes_and_drops_are_not() -> None:
    config = DetectorConfig()
    quiet = _series(400, seed=1, weekend=1.6)
    assert scan_series(quiet, DAYS, config) == []

    odd = _series(400, seed=1, weekend=1.6, events={SPIKE_DAY: 4.0, DROP_DAY: 0.1})
    found = {(f.day, f.kind) for f in scan_series(odd, DAYS, config)}
    assert found == {(SPIKE_DAY, "spike"), (DROP_DAY, "drop")}


def test_a_series_that_stops_is_a_drop_and_small_or_young_series_are_left_alone() -> None:
    config = DetectorConfig()
    stopped = {day: value for day, value in _series(300, seed=2).items() if day < DROP_DAY}
    assert [(f.day, f.kind) for f in scan_series(stopped, [DROP_DAY], config)] == [(DROP_DAY, "drop")]

    small = _series(3, seed=3, events={SPIKE_DAY: 5.0})  # 15 plays is not news
    assert scan_series(small, DAYS, config) == []

    young = {
        day: value
        for day, value in _series(300, seed=4, events={LAST: 6.0}).items()
        if day > LAST - timedelta(days=10)
    }
    assert scan_series(young, [LAST], config) == []  # ten days of history are too few to judge


# --- rollups ---------------------------------------------------------------------------------


@pytest.fixture
async def pool(clean_analytics: str) -> AsyncIterator[asyncpg.Pool]:
    created = await pg_pool(clean_analytics, min_size=1, max_size=2)
    try:
        yield created
    finally:
        await created.close()


def _inline_settings(dsn: str, **overrides: Any) -> Settings:
    return analytics_settings("", dsn, **overrides)


async def _daily(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT day, artist_id, track_id, source, event_type, events, quantity, amount_cents, updated_at "
        "FROM analytics_daily ORDER BY 1, 2, 3, 4, 5"
    )
    return [tuple(row) for row in rows]


def _row(
    event_id: str,
    event_type: str,
    artist: str,
    track: str | None,
    day: date,
    quantity: int = 1,
    cents: int = 0,
) -> list[Any]:
    moment = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    row = [
        event_id,
        event_type,
        artist,
        track,
        "spotify",
        int(moment.timestamp() * 1_000_000),
        quantity,
        cents,
        None,
    ]
    assert len(row) == len(ROW_COLUMNS)
    return row


async def test_rollup_matches_the_raw_events_and_running_it_twice_changes_nothing(
    pool: asyncpg.Pool, clean_analytics: str
) -> None:
    d1, d2 = date(2025, 3, 10), date(2025, 3, 11)
    rows = [
        _row(f"r-{i}", "stream", "ar-1", f"t-{i % 3}", d1 if i % 2 else d2, quantity=1 + i % 4)
        for i in range(300)
    ]
    rows += [_row(f"s-{i}", "sale", "ar-1", None, d1, cents=250) for i in range(7)]
    rows += [_row(f"p-{i}", "page_view", "ar-2", None, d2) for i in range(40)]
    await write_rows(pool, rows)

    async with Producer(_inline_settings(clean_analytics), registry=TEST_ANALYTICS_REGISTRY) as producer:
        first = await (await producer.enqueue(rollup_analytics)).result()
        assert sorted(first["days"]) == [d1.isoformat(), d2.isoformat()]
        after_first = await _daily(pool)
        # Recomputing the same days finds every total already right: nothing is written.
        again = await (await producer.enqueue(rollup_analytics, days=[d1, d2])).result()
        assert again["rows_changed"] == 0
        assert await _daily(pool) == after_first
        # Nothing new: the next scheduled run has no day to do.
        assert (await (await producer.enqueue(rollup_analytics)).result())["days"] == []

        raw = await pool.fetch(
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, artist_id, coalesce(track_id, ''),"
            " source, event_type, count(*), sum(quantity), sum(amount_cents)"
            " FROM analytics_events GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
        )
        assert [tuple(r) for r in raw] == [r[:8] for r in after_first]
        sale = next(r for r in after_first if r[4] == "sale")
        assert (sale[5], sale[7]) == (7, 7 * 250)

        # A late event (and a duplicate of an old one) marks its day; only that day is redone.
        await write_rows(pool, [_row("late-1", "stream", "ar-1", "t-0", d1, quantity=5), rows[1]])
        late = await (await producer.enqueue(rollup_analytics)).result()
        assert (late["days"], late["rows_changed"]) == ([d1.isoformat()], 1)


async def test_rollups_racing_with_flushes_end_with_totals_that_match_the_events(
    pool: asyncpg.Pool, clean_analytics: str
) -> None:
    # A flush that commits while a rollup recomputes its day must leave the day marked.
    day = date(2025, 3, 12)
    writing = True

    async def flushes() -> None:
        nonlocal writing
        for i in range(150):
            await write_rows(pool, [_row(f"race-{i}-{j}", "stream", "ar-9", "t-1", day) for j in range(20)])
        writing = False

    async with pg_pool(clean_analytics, min_size=2, max_size=2) as roll_pool:
        _, runs = await asyncio.gather(flushes(), _rollups_on(roll_pool, lambda: writing))
        await rollup_days(roll_pool)
    assert runs > 5
    assert await pool.fetchval("SELECT sum(quantity) FROM analytics_daily WHERE day = $1", day) == 150 * 20
    assert await pool.fetchval("SELECT count(*) FROM analytics_dirty_days") == 0


async def _rollups_on(pool: asyncpg.Pool, busy: Callable[[], bool]) -> int:
    runs = 0
    while busy():
        await rollup_days(pool)
        runs += 1
    return runs


# --- detection on a generated data set ---------------------------------------------------------


async def _generate(pool: asyncpg.Pool) -> None:
    series: list[tuple[str, str, str, dict[date, int]]] = [
        ("quiet-1", "q1", "stream", _series(400, seed=10)),
        ("quiet-2", "q2a", "stream", _series(150, seed=11, weekend=1.8)),
        ("quiet-2", "q2b", "stream", _series(60, seed=12, weekend=1.0)),
        ("quiet-2", "", "page_view", _series(80, seed=13)),
        ("spiky", "s1", "stream", _series(300, seed=14, events={SPIKE_DAY: 5.0})),
        ("spiky", "s2", "stream", _series(200, seed=15)),
        ("droppy", "d1", "stream", _series(500, seed=16, events={DROP_DAY: 0.05})),
        ("small", "m1", "stream", _series(3, seed=17, events={SPIKE_DAY: 5.0})),
    ]
    for i, (artist, track, event_type, daily) in enumerate(series):
        await write_daily_series(
            pool,
            artist=artist,
            track=track or None,
            daily=daily,
            event_type=event_type,
            seed=i,
        )
    await pool.executemany(
        "INSERT INTO analytics_contacts (artist_id, email, name, anomaly_alerts) VALUES ($1, $2, $3, $4)",
        [("spiky", "spiky@example.com", "Spiky", True), ("droppy", "droppy@example.com", None, False)],
    )


async def test_known_spikes_and_drops_are_found_emailed_once_and_quiet_series_raise_none(
    pool: asyncpg.Pool, clean_analytics: str
) -> None:
    await _generate(pool)
    settings = _inline_settings(clean_analytics, analytics_anomaly_scan_days=28)
    async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
        result = await (await producer.enqueue(detect_analytics_anomalies, through=LAST)).result()
        assert result["series"] == 13  # 7 track series, 6 artist totals (per event type)
        alerts = {
            (r["artist_id"], r["track_id"], r["metric"], r["day"], r["kind"])
            for r in await pool.fetch("SELECT * FROM analytics_alerts")
        }
        assert alerts == {
            ("spiky", "s1", "stream", SPIKE_DAY, "spike"),
            ("spiky", "", "stream", SPIKE_DAY, "spike"),  # the artist's total over tracks
            ("droppy", "d1", "stream", DROP_DAY, "drop"),
            ("droppy", "", "stream", DROP_DAY, "drop"),
        }
        assert result["new_alerts"] == 4
        # Spiky wants alert emails (one per alert); droppy opted out.
        assert sorted(s[0] for s in SENT) == sorted(
            f"analytics-alert:{r['alert_id']}"
            for r in await pool.fetch("SELECT alert_id FROM analytics_alerts WHERE artist_id = 'spiky'")
        )
        assert all(s[1] == "spiky@example.com" and s[3] == s[0] for s in SENT)
        assert "jump in streams" in SENT[0][2]

        rerun = await (await producer.enqueue(detect_analytics_anomalies, through=LAST)).result()
        assert (rerun["new_alerts"], rerun["emailed"]) == (0, 0)
        assert len(SENT) == 2
    assert await pool.fetchval("SELECT count(*) FROM analytics_alerts WHERE notified_at IS NULL") == 0
