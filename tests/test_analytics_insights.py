"""Weekly insights: one digest per artist and week, in queued and inline mode, also on a re-run."""

from __future__ import annotations

import email
import email.message
import email.policy
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devservices.redis import RedisServer
from jobs import REGISTRY
from jobs.analytics import send_weekly_insights
from jobs.analytics.events import ROW_COLUMNS
from jobs.analytics.store import write_rows
from jobs.email.templates import render_template
from tests.ai_fixtures import FakeAI, Reply, completion, fake_ai, log_events
from tests.analytics_fixtures import (
    SENT,
    SENT_MESSAGES,
    TEST_ANALYTICS_REGISTRY,
    analytics_settings,
    clean_analytics,
    start_analytics_worker,
)
from tests.conftest import eventually, pg_connect, pg_pool, raw_redis
from worker.producer import Producer

__all__ = ["clean_analytics", "fake_ai"]  # fixtures used by name below

WEEK = "2025-W10"
MONDAY = date(2025, 3, 3)
PREVIOUS_MONDAY = MONDAY - timedelta(days=7)


def _rows(
    artist: str, day: date, event_type: str, track: str | None, source: str, quantity: int, cents: int = 0
) -> list[Any]:
    moment = datetime(day.year, day.month, day.day, 15, tzinfo=UTC)
    key = f"{artist}-{day}-{event_type}-{track}-{source}"
    row = [key, event_type, artist, track, source, int(moment.timestamp() * 1_000_000), quantity, cents, None]
    assert len(row) == len(ROW_COLUMNS)
    return row


async def _generate(dsn: str) -> None:
    rows = [
        # alpha: 1,100 streams this week (t1 > t2 > t3), 800 the week before; two sales.
        _rows("alpha", MONDAY, "stream", "t1", "spotify", 600),
        _rows("alpha", MONDAY + timedelta(days=2), "stream", "t1", "apple_music", 100),
        _rows("alpha", MONDAY + timedelta(days=3), "stream", "t2", "spotify", 300),
        _rows("alpha", MONDAY + timedelta(days=6), "stream", "t3", "youtube", 100),
        _rows("alpha", PREVIOUS_MONDAY, "stream", "t1", "spotify", 800),
        _rows("alpha", MONDAY + timedelta(days=1), "sale", None, "marketplace", 2, cents=2998),
        # beta: active the week before only; still gets a digest (with a -100% change).
        _rows("beta", PREVIOUS_MONDAY + timedelta(days=4), "page_view", None, "web", 40),
        # gamma opted out, delta has no contact: no digest for either.
        _rows("gamma", MONDAY, "stream", "g1", "spotify", 50),
        _rows("delta", MONDAY, "stream", "x1", "spotify", 50),
        # Outside both weeks: ignored.
        _rows("alpha", MONDAY + timedelta(days=7), "stream", "t9", "spotify", 10_000),
    ]
    conn = await pg_connect(dsn)
    pool = await pg_pool(dsn, min_size=1, max_size=1)
    try:
        await write_rows(pool, rows)
        await conn.executemany(
            "INSERT INTO analytics_contacts (artist_id, email, name, weekly_insights)"
            " VALUES ($1, $2, $3, $4)",
            [
                ("alpha", "alpha@example.com", "Alpha", True),
                ("beta", "beta@example.com", None, True),
                ("gamma", "gamma@example.com", None, False),
                ("epsilon", "epsilon@example.com", None, True),  # no activity at all
            ],
        )
        await conn.execute(
            "INSERT INTO analytics_alerts (artist_id, track_id, metric, day, kind, observed, expected, score,"
            " notified_at) VALUES ('alpha', 't1', 'stream', $1, 'spike', 600, 120, 9.5, now())",
            MONDAY,
        )
    finally:
        await pool.close()
        await conn.close()


@pytest.fixture(params=["queued", "inline"])
async def producer(
    request: pytest.FixtureRequest, redis_server: RedisServer, clean_analytics: str
) -> AsyncIterator[Producer]:
    if request.param == "inline":
        async with Producer(
            analytics_settings("", clean_analytics), registry=TEST_ANALYTICS_REGISTRY
        ) as inline:
            yield inline
        return
    settings = analytics_settings(redis_server.url, clean_analytics)
    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as queued:
            await raw_redis(queued.settings).flushdb()  # digest job ids of earlier tests are still kept there
            yield queued
    finally:
        await worker.stop()


async def _digests(dsn: str) -> dict[str, dict[str, Any]]:
    conn = await pg_connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT artist_id, job_id, summary FROM analytics_digests WHERE iso_week = $1", WEEK
        )
    finally:
        await conn.close()
    return {row["artist_id"]: {"job_id": row["job_id"], **orjson.loads(row["summary"])} for row in rows}


async def _sent_count(expected: int) -> bool:
    return len(SENT) >= expected


async def test_one_digest_per_artist_and_week_even_when_the_job_runs_twice(
    producer: Producer, clean_analytics: str
) -> None:
    await _generate(clean_analytics)
    first = await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=10)
    assert first == {"week": WEEK, "queued": 2, "refused": 0}
    await eventually(lambda: _sent_count(2), what="two digests sent")
    second = await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=10)
    assert second == {"week": WEEK, "queued": 0, "refused": 0}

    assert sorted((s[0], s[1], s[3]) for s in SENT) == [
        (f"weekly-insights:alpha:{WEEK}", "alpha@example.com", f"weekly-insights:alpha:{WEEK}"),
        (f"weekly-insights:beta:{WEEK}", "beta@example.com", f"weekly-insights:beta:{WEEK}"),
    ]
    assert {s[4] for s in SENT} == {"queued" if producer.backend.usable else "inline"}

    digests = await _digests(clean_analytics)
    assert set(digests) == {"alpha", "beta"}
    alpha = digests["alpha"]
    assert alpha["totals"]["stream"] == {"this_week": 1100, "last_week": 800, "change_pct": 37.5}
    assert alpha["sales_cents"] == {"this_week": 2998, "last_week": 0, "change_pct": None}
    assert [t["track_id"] for t in alpha["top_tracks"]] == ["t1", "t2", "t3"]
    assert [s["source"] for s in alpha["top_sources"]] == ["spotify", "apple_music", "youtube", "marketplace"]
    assert [(a["track_id"], a["kind"]) for a in alpha["open_alerts"]] == [("t1", "spike")]
    assert digests["beta"]["totals"]["page_view"] == {"this_week": 0, "last_week": 40, "change_pct": -100.0}


async def test_the_digest_job_id_also_stops_a_second_email_when_the_record_is_gone(
    redis_server: RedisServer, clean_analytics: str
) -> None:
    # Belt and braces: even if the digests table lost its rows, Redis refuses the same job id.
    await _generate(clean_analytics)
    settings = analytics_settings(redis_server.url, clean_analytics)
    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
            await raw_redis(producer.settings).flushdb()
            await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=10)
            await eventually(lambda: _sent_count(2))
            conn = await pg_connect(clean_analytics)
            try:
                await conn.execute("DELETE FROM analytics_digests")
            finally:
                await conn.close()
            again = await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=10)
            assert again["queued"] == 2  # handed over again, and Redis answered "duplicate"
    finally:
        await worker.stop()
    assert len(SENT) == 2


async def _name_tracks(dsn: str) -> None:
    conn = await pg_connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO analytics_tracks (track_id, artist_id, title) VALUES ('t1', 'alpha', 'Night Drive')"
        )
    finally:
        await conn.close()


async def test_the_digest_is_the_weekly_digest_template_with_track_titles(clean_analytics: str) -> None:
    await _generate(clean_analytics)
    await _name_tracks(clean_analytics)
    async with Producer(
        analytics_settings("", clean_analytics), registry=TEST_ANALYTICS_REGISTRY
    ) as producer:
        await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=10)
    alpha = next(m for m in SENT_MESSAGES if m["to"][0]["email"] == "alpha@example.com")
    assert alpha["template"] == "weekly_digest"
    context = alpha["context"]
    assert context["userName"] == "Alpha"
    assert context["weekLabel"] == "3 to 9 March"
    assert (context["streamsThisWeek"], context["streamsLastWeek"]) == (1100, 800)
    assert context["streamsChangePercent"] == 37.5
    assert context["revenueEarned"] == 29.98
    # Titles where the web app named the track; an unnamed one keeps its id rather than vanish.
    assert [t["title"] for t in context["topTracks"]] == ["Night Drive", "t2", "t3"]
    assert context["highlights"] == ["Streams of Night Drive jumped on Monday 3 March"]
    assert "narrative" not in context  # AI is not configured
    rendered = render_template("weekly_digest", context)  # the real template takes it as is
    assert rendered.subject == "Your week on Max Booster: 3 to 9 March"
    assert rendered.text is not None
    assert "1. Night Drive (700 streams)" in rendered.text
    assert "+38% on last week" in rendered.text


async def test_the_ai_writes_the_story_of_the_week_when_configured(
    clean_analytics: str, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    await _generate(clean_analytics)
    await _name_tracks(clean_analytics)
    story = {"headline": "Night Drive carried your week", "narrative": "Streams rose 37.5% to 1100."}
    fake_ai.queue(completion(story), Reply(400, {"error": {"message": "context length exceeded"}}))
    settings = analytics_settings(
        "", clean_analytics, ai_base_url=fake_ai.url, ai_model="fake-model", ai_requests_per_minute=0
    )
    async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
        result = await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=10)
    assert result["queued"] == 2  # the AI failing for one artist holds back no digest
    contexts = {m["to"][0]["email"]: m["context"] for m in SENT_MESSAGES}
    with_story = [c for c in contexts.values() if "narrative" in c]
    assert [c["narrative"] for c in with_story] == [story]
    assert len(contexts) == 2
    prompt = " ".join(m["content"] for r in fake_ai.requests for m in r.messages)
    assert "Night Drive" in prompt  # the AI sees titles, not ids
    warnings = [
        e for e in log_events(log_output, "weekly insights narrative unavailable, the digest goes without it")
    ]
    assert len(warnings) == 1


def _mails(directory: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in directory.glob("*.eml")
    ]


async def test_a_real_digest_email_shows_titles_and_the_week(clean_analytics: str, tmp_path: Path) -> None:
    # The real registry: the digest goes through the email family's send_email and template.
    await _generate(clean_analytics)
    await _name_tracks(clean_analytics)
    settings = analytics_settings("", clean_analytics, email_transport="file", email_file_dir=str(tmp_path))
    async with Producer(settings, registry=REGISTRY) as producer:
        result = await (await producer.enqueue(send_weekly_insights, week=WEEK)).result(timeout=20)
    assert result == {"week": WEEK, "queued": 2, "refused": 0}
    mails = _mails(tmp_path)
    alpha = next(m for m in mails if "alpha@example.com" in str(m["To"]))
    assert alpha["Subject"] == "Your week on Max Booster: 3 to 9 March"
    body = alpha.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "1. Night Drive (700 streams)" in text
    assert "Streams:          1,100 (+38% on last week)" in text
