"""The platform's analytics: beat interactions, pre-saves and shares as events, and historical
streams imported from CSV (any age, stored once however often the file is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from devservices.redis import RedisServer
from jobs.analytics.rollup import rollup_days
from tests.analytics_fixtures import (
    TEST_ANALYTICS_REGISTRY,
    analytics_settings,
    clean_analytics,
    start_analytics_worker,
)
from tests.conftest import eventually, pg_connect, pg_pool
from worker.producer import Producer

__all__ = ["clean_analytics"]  # fixture used by name below

ROOT = Path(__file__).resolve().parents[1]


async def _daily(dsn: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(event type, track) -> (quantity, amount in cents) over every day."""
    conn = await pg_connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT event_type, track_id, sum(quantity) AS q, sum(amount_cents) AS c FROM analytics_daily"
            " GROUP BY event_type, track_id"
        )
    finally:
        await conn.close()
    return {(r["event_type"], r["track_id"]): (int(r["q"]), int(r["c"])) for r in rows}


async def test_beat_interactions_presaves_and_shares_are_stored_and_rolled_up(clean_analytics: str) -> None:
    beat = {"artist_id": "producer-7", "track_id": "beat-42", "source": "for_you_feed"}
    events: list[dict[str, Any]] = [
        {"type": kind, **beat}
        for kind in ("play", "like", "share", "preview", "skip", "repeat", "add_to_cart")
    ]
    events += [
        {"type": "play", **beat, "properties": {"play_duration_seconds": 31, "completion_rate": 0.4}},
        {"type": "purchase", **beat, "amount_cents": 2999},
        {"type": "presave", "artist_id": "producer-7", "source": "hyperfollow", "quantity": 3},
        {
            "type": "share",
            "artist_id": "producer-7",
            "source": "countdown",
            "quantity": 2,
        },  # a page, no track
    ]
    refused: list[dict[str, Any]] = [
        {"type": "like", "artist_id": "producer-7", "source": "browse"},  # a like is of a beat
        {"type": "skip", **beat, "amount_cents": 100},
    ]
    async with Producer(
        analytics_settings("", clean_analytics), registry=TEST_ANALYTICS_REGISTRY
    ) as producer:
        result = await producer.track_events([*events, *refused])
    assert (result.accepted, result.refused) == (len(events), 2)
    reasons = [e.reason for e in result.errors]
    assert "a 'like' event needs 'track_id'" in reasons[0]
    assert "'amount_cents' is only for 'sale' and 'purchase' events, not 'skip'" in reasons[1]
    async with pg_pool(clean_analytics, min_size=1, max_size=1) as pool:
        await rollup_days(pool)
    daily = await _daily(clean_analytics)
    assert daily[("play", "beat-42")] == (2, 0)
    assert daily[("purchase", "beat-42")] == (1, 2999)
    assert daily[("add_to_cart", "beat-42")] == (1, 0)
    assert daily[("presave", "")] == (3, 0)
    assert daily[("share", "")] == (2, 0)
    assert daily[("share", "beat-42")] == (1, 0)


def _import(dsn: str, path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": "", "LOG_FORMAT": "json", **env}
    return subprocess.run(
        [sys.executable, "-m", "worker", "import-streams", str(path), *extra],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


REPORT = """\
Date,Artist,ISRC,Platform,Territory,Streams,Title
2023-03-01,alpha,USRC17607839,Spotify,US,1200,Night Drive
2023-03-01,alpha,USRC17607839,Spotify,FR,300,Night Drive
2023-03-01,alpha,USRC17607839,Apple Music,US,250,Night Drive
2023-03-02,alpha,USRC17607840,YouTube Music,US,"1,000",Daybreak
2023-03-02,alpha,USRC17607840,Deezer,US,0,Daybreak
"""


async def test_a_years_old_streams_report_is_imported_once(clean_analytics: str, tmp_path: Path) -> None:
    report = tmp_path / "streams.csv"
    report.write_text(REPORT)
    first = _import(clean_analytics, report)
    assert first.returncode == 0, first.stderr
    summary = orjson.loads(first.stdout)
    assert summary["imported"] == 4
    assert summary["skipped_zero"] == 1
    assert (summary["first_day"], summary["last_day"]) == ("2023-03-01", "2023-03-02")
    daily = await _daily(clean_analytics)  # rolled up at once
    assert daily[("stream", "USRC17607839")] == (1750, 0)
    assert daily[("stream", "USRC17607840")] == (1000, 0)

    again = _import(clean_analytics, report)  # the same report, imported again
    assert orjson.loads(again.stdout)["imported"] == 0
    assert orjson.loads(again.stdout)["already_imported"] == 4
    assert await _daily(clean_analytics) == daily

    conn = await pg_connect(clean_analytics)
    try:
        sources = {r["source"] for r in await conn.fetch("SELECT source FROM analytics_events")}
        titles = {
            r["track_id"]: r["title"]
            for r in await conn.fetch("SELECT track_id, title FROM analytics_tracks")
        }
    finally:
        await conn.close()
    assert sources == {"spotify", "apple_music", "youtube_music"}
    assert titles == {"USRC17607839": "Night Drive", "USRC17607840": "Daybreak"}


async def test_a_bad_report_is_refused_whole_naming_the_lines(clean_analytics: str, tmp_path: Path) -> None:
    lines = ["date,artist_id,track_id,source,streams"]
    lines += [f"2022-05-{1 + i % 28:02d},alpha,t{i},spotify,{i + 1}" for i in range(60)]
    lines[57] = "05/27/2022,alpha,t56,spotify,7"  # file line 58
    lines[30] = "2022-05-03,alpha,t29,spotify,-4"  # file line 31
    report = tmp_path / "bad.csv"
    report.write_text("\n".join(lines) + "\n")
    # A small payload limit splits the file into several chunks; line numbers stay the file's.
    result = _import(clean_analytics, report, MAX_PAYLOAD_BYTES="2048")
    assert result.returncode == 2
    assert "line 31: streams '-4' is not a whole number of streams" in result.stderr
    assert "line 58: date '05/27/2022' is not YYYY-MM-DD or an ISO time" in result.stderr
    assert await _daily(clean_analytics) == {}  # nothing imported: every chunk is checked first
    missing = tmp_path / "nocolumns.csv"
    missing.write_text("when,who,plays\n2022-01-01,a,1\n")
    refused = _import(clean_analytics, missing)
    assert refused.returncode == 2
    assert "lacks date (or day, occurred_at, timestamp)" in refused.stderr


async def test_a_large_report_goes_in_chunks_and_through_the_workers(
    redis_server: RedisServer, clean_analytics: str, tmp_path: Path
) -> None:
    start = date(2021, 1, 1)
    rows = [f"{start + timedelta(days=i % 365)},alpha,t{i % 50},spotify,{i % 7 + 1}" for i in range(3000)]
    report = tmp_path / "big.csv"
    report.write_text("date,artist_id,track_id,source,streams\n" + "\n".join(rows) + "\n")
    expected = sum(i % 7 + 1 for i in range(3000))
    settings = analytics_settings(redis_server.url, clean_analytics)
    worker = await start_analytics_worker(settings)
    try:
        env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": settings.queue_name, "MAX_PAYLOAD_BYTES": "16384"}
        queued = _import(clean_analytics, report, "--queue", **env)
        assert queued.returncode == 0, queued.stderr
        out = orjson.loads(queued.stdout)
        assert out["mode"] == "queued"
        assert out["chunks"] == len(out["job_ids"]) > 1
        async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:

            async def all_done() -> bool:
                return all([(await producer.status(j))["status"] == "complete" for j in out["job_ids"]])

            await eventually(all_done, timeout=30, what="every chunk imported by the worker")
    finally:
        await worker.stop()
    async with pg_pool(clean_analytics, min_size=1, max_size=1) as pool:
        assert await pool.fetchval("SELECT sum(quantity) FROM analytics_daily") == expected
        assert await pool.fetchval("SELECT count(*) FROM analytics_events") == 3000
