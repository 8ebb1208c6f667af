"""Shared pieces of the analytics tests: a registry with a stand-in `send_email`, fast settings,
a clean analytics schema per test, event generators and a worker running that registry.

The stand-in records what the analytics jobs asked to send, so tests count emails without the
email family's code.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from core import JobContext, Registry, Schedule, define
from devservices.postgres import PostgresServer
from jobs import ANALYTICS_JOBS, ping
from jobs.analytics.events import ROW_COLUMNS
from jobs.analytics.ingest import AnalyticsIngest, EventIngest
from jobs.analytics.store import write_rows
from settings import Settings
from tests.conftest import RunningWorker, make_settings, pg_connect
from worker.engine import WorkerService
from worker.ledger.migrate import apply_migrations
from worker.producer import Producer

__all__ = [
    "ANALYTICS_TABLES",
    "SENT",
    "SENT_MESSAGES",
    "TEST_ANALYTICS_REGISTRY",
    "analytics_settings",
    "clean_analytics",
    "count_events",
    "ingest_of",
    "make_events",
    "pg_server",
    "start_analytics_worker",
    "stored_ids",
    "write_daily_series",
]

# Every email the analytics jobs queued: (job id, recipient, subject or template, idempotency
# key, mode); and each message as it was asked for.
SENT: list[tuple[str, str, str, str | None, str]] = []
SENT_MESSAGES: list[dict[str, Any]] = []

ANALYTICS_TABLES = (
    "analytics_events",
    "analytics_dirty_days",
    "analytics_daily",
    "analytics_alerts",
    "analytics_contacts",
    "analytics_digests",
    "analytics_tracks",
)


async def send_email(
    ctx: JobContext, *, message: dict[str, Any], idempotency_key: str | None = None
) -> dict[str, Any]:
    """Stand-in for the email family's job: record the request."""
    what = message.get("subject") or f"template:{message.get('template')}"
    SENT.append((ctx.job_id, message["to"][0]["email"], what, idempotency_key, ctx.mode))
    SENT_MESSAGES.append(message)
    return {"sent": True}


TEST_ANALYTICS_REGISTRY = Registry(
    [define(ping), *ANALYTICS_JOBS, define(send_email, max_tries=2)],
    schedules=[Schedule.every_seconds("flush_analytics_events", 1)],
    plugins=[AnalyticsIngest],
)


def analytics_settings(redis_url: str, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "analytics_buffer_flush_interval_s": 0.05,
        "analytics_buffer_full_timeout_s": 2.0,
        "analytics_flush_lease_s": 2.0,
        "analytics_close_timeout_s": 10.0,
        "analytics_batch_bytes": 256 * 1024,
        **overrides,
    }
    return make_settings(redis_url, **values)


@pytest.fixture
def clean_analytics(database_url: str) -> str:
    """The session database with empty analytics tables, and the stand-in's record cleared."""

    async def truncate() -> None:
        conn = await pg_connect(database_url)
        try:
            await conn.execute(f"TRUNCATE {', '.join(ANALYTICS_TABLES)}")
        finally:
            await conn.close()

    asyncio.run(truncate())
    SENT.clear()
    SENT_MESSAGES.clear()
    return database_url


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    """A migrated PostgreSQL server of this test's own, which it may stop and restart."""
    with PostgresServer() as server:

        async def migrate() -> None:
            conn = await pg_connect(server.url)
            try:
                await apply_migrations(conn)
            finally:
                await conn.close()

        asyncio.run(migrate())
        yield server


async def start_analytics_worker(settings: Settings) -> RunningWorker:
    service = WorkerService(settings, registry=TEST_ANALYTICS_REGISTRY, handle_signals=False)
    return RunningWorker(service, asyncio.create_task(service.run()))


def make_events(
    n: int, *, prefix: str, artist: str = "artist-1", tracks: int = 10, when: datetime | None = None
) -> list[dict[str, Any]]:
    """`n` valid stream events with ids `{prefix}-{i}`."""
    now = when or datetime.now(UTC)
    return [
        {
            "event_id": f"{prefix}-{i}",
            "type": "stream",
            "artist_id": artist,
            "track_id": f"track-{i % tracks}",
            "source": "spotify",
            "occurred_at": now - timedelta(seconds=i % 3600),
        }
        for i in range(n)
    ]


async def count_events(dsn: str, prefix: str) -> int:
    conn = await pg_connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM analytics_events WHERE event_id LIKE $1", prefix + "-%")
        )
    finally:
        await conn.close()


async def stored_ids(dsn: str, prefix: str) -> list[str]:
    conn = await pg_connect(dsn)
    try:
        rows = await conn.fetch("SELECT event_id FROM analytics_events WHERE event_id LIKE $1", prefix + "-%")
    finally:
        await conn.close()
    return [row["event_id"] for row in rows]


async def write_daily_series(
    pool: asyncpg.Pool,
    *,
    artist: str,
    track: str | None,
    daily: dict[date, int],
    event_type: str = "stream",
    source: str = "spotify",
    seed: int = 0,
) -> None:
    """Raw events whose quantities add up to `daily[day]` on each day, a few events per day."""
    rng = random.Random(seed)
    rows: list[list[Any]] = []
    for day, total in daily.items():
        remaining = total
        part = 0
        while remaining > 0:
            quantity = min(remaining, rng.randint(1, max(1, total // 3)))
            remaining -= quantity
            moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC) + timedelta(minutes=part)
            occurred_us = int(moment.timestamp() * 1_000_000)
            event_id = f"gen-{artist}-{track}-{event_type}-{day.isoformat()}-{part}-{os.urandom(4).hex()}"
            rows.append([event_id, event_type, artist, track, source, occurred_us, quantity, 0, None])
            part += 1
    assert all(len(row) == len(ROW_COLUMNS) for row in rows)
    await write_rows(pool, rows)


def ingest_of(producer: Producer) -> EventIngest:
    """The producer's analytics ingestion (its plug-in's), for its counters and buffer."""
    plugin = producer.plugin("analytics")
    assert isinstance(plugin, AnalyticsIngest)
    return plugin.ingest
