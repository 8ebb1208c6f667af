"""Postgres faults under the flush: connections terminated mid-batch, the server briefly gone,
and a flusher that dies holding a batch. No event is lost and none is stored twice.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from devservices.postgres import PostgresServer
from devservices.redis import RedisServer
from jobs.analytics.ingest.list_queue import ListEventQueue
from tests.analytics_fixtures import (
    TEST_ANALYTICS_REGISTRY,
    analytics_settings,
    clean_analytics,
    count_events,
    make_events,
    pg_server,
    start_analytics_worker,
)
from tests.conftest import eventually, pg_connect
from worker.backend import RedisBackend
from worker.producer import Producer

__all__ = ["clean_analytics", "pg_server"]  # fixtures used by name below

_SLOW_FLUSH = """
CREATE FUNCTION test_slow_flush() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$;
CREATE TRIGGER test_slow_flush BEFORE INSERT ON analytics_dirty_days
FOR EACH STATEMENT EXECUTE FUNCTION test_slow_flush();
"""
# Only statements of the flush, only in this test's database.
_TERMINATE_FLUSHES = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
  AND query LIKE '%analytics_events_staging%'
"""


def _log_events(log_output: io.StringIO, event: str) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


@pytest.fixture
async def slow_flush(clean_analytics: str) -> AsyncIterator[str]:
    """Each flush transaction lingers 30 ms in its INSERT, as on a slow disk, so a termination
    reliably lands in the middle of one."""
    conn = await pg_connect(clean_analytics)
    try:
        await conn.execute(_SLOW_FLUSH)
        yield clean_analytics
    finally:
        await conn.execute(
            "DROP TRIGGER IF EXISTS test_slow_flush ON analytics_dirty_days;"
            " DROP FUNCTION IF EXISTS test_slow_flush()"
        )
        await conn.close()


async def test_flush_connection_terminated_mid_batch_loses_and_duplicates_nothing(
    redis_server: RedisServer, slow_flush: str, log_output: io.StringIO
) -> None:
    # Small batches: many flush transactions for the terminations to land in.
    settings = analytics_settings(redis_server.url, slow_flush, analytics_batch_bytes=32 * 1024)
    killer = await pg_connect(slow_flush)
    terminated = 0
    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
            for i in range(10):
                await producer.track_events(make_events(1000, prefix=f"term-{i}"))
            while terminated < 3:
                terminated += await killer.fetchval(_TERMINATE_FLUSHES)
                await asyncio.sleep(0.005)
            await eventually(lambda: _count_is(slow_flush, "term", 10_000), timeout=20)
    finally:
        await worker.stop()
        await killer.close()
    # Each terminated flush ended in a transient error (retried) and gave its batch back.
    cut_short = [
        line
        for line in _log_events(log_output, "job finished")
        if line.get("outcome") == "retry" or line.get("kind") == "transient"
    ]
    assert len(cut_short) >= 3


async def test_postgres_briefly_gone_loses_and_duplicates_nothing(
    redis_server: RedisServer, pg_server: PostgresServer, log_output: io.StringIO
) -> None:
    settings = analytics_settings(redis_server.url, pg_server.url)
    no_redis = analytics_settings("", pg_server.url)
    worker = await start_analytics_worker(settings)
    try:
        async with (
            Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer,
            Producer(no_redis, registry=TEST_ANALYTICS_REGISTRY) as inline_producer,
        ):
            await producer.track_events(make_events(5000, prefix="gone-before"))
            await eventually(lambda: _count_is(pg_server.url, "gone-before", 5000))

            pg_server.stop()
            await producer.track_events(make_events(5000, prefix="gone-queued"))
            await inline_producer.track_events(make_events(5000, prefix="gone-inline"))
            await asyncio.sleep(1.5)  # flushes fail meanwhile, both in the worker and inline
            pg_server.start()

            await eventually(lambda: _count_is(pg_server.url, "gone-queued", 5000), timeout=20)
            await eventually(lambda: _count_is(pg_server.url, "gone-inline", 5000), timeout=20)
    finally:
        await worker.stop()
    assert await count_events(pg_server.url, "gone") == 15_000
    outcomes = {(line.get("outcome"), line.get("kind")) for line in _log_events(log_output, "job finished")}
    assert {("failed", "transient"), ("retry", None), ("complete", None)} <= outcomes


async def test_batch_of_a_dead_flusher_is_recovered_after_its_lease(
    redis_server: RedisServer, clean_analytics: str
) -> None:
    settings = analytics_settings(redis_server.url, clean_analytics, analytics_flush_lease_s=0.5)
    async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
        await producer.track_events(make_events(3000, prefix="lease"))
    # A flusher claims a batch and dies before writing it.
    backend = RedisBackend(settings, role="test")
    await backend.start()
    try:
        claimed = await ListEventQueue(backend.batch_list("analytics", settings.queue_name), settings).claim()
        assert claimed is not None
        assert claimed.chunks
    finally:
        await backend.aclose()
    worker = await start_analytics_worker(settings)
    try:
        await eventually(lambda: _count_is(clean_analytics, "lease", 3000), timeout=10)
    finally:
        await worker.stop()


async def _count_is(dsn: str, prefix: str, expected: int) -> bool:
    try:
        return await count_events(dsn, prefix) == expected
    except (OSError, asyncpg.PostgresError):
        return False
