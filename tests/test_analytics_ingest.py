"""Event ingestion end to end: producer call -> Redis list or in-process buffer -> Postgres rows.

Every accepted event is stored exactly once: with Redis up, with Redis down, across an outage,
and when the same events are sent twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from core import Registry
from core.errors import JobValidationError
from core.flow import queue_key
from devservices.redis import RedisServer
from jobs.analytics.events import WIRE_VERSION
from jobs.analytics.ingest import EventBufferFull, EventsNotDelivered, InvalidEvent
from tests.analytics_fixtures import (
    TEST_ANALYTICS_REGISTRY,
    analytics_settings,
    clean_analytics,
    count_events,
    ingest_of,
    make_events,
    start_analytics_worker,
    stored_ids,
)
from tests.conftest import RunningWorker, eventually, raw_redis
from worker.engine import WorkerService
from worker.producer import Producer

__all__ = ["clean_analytics"]  # fixtures used by name below


async def test_invalid_events_are_refused_with_reasons_and_the_rest_accepted(
    redis_server: RedisServer, clean_analytics: str
) -> None:
    settings = analytics_settings(redis_server.url, clean_analytics, analytics_max_events_per_call=100)
    now = datetime.now(UTC)
    good = make_events(3, prefix="valid")
    bad: list[Any] = [
        {"type": "concert", "artist_id": "a1", "source": "web"},
        {"type": "stream", "artist_id": "a1", "source": "spotify"},
        {"type": "page_view", "artist_id": "a1", "source": "web", "occurred_at": now - timedelta(days=30)},
        {"type": "page_view", "artist_id": "a1", "source": "web", "occurred_at": now + timedelta(hours=2)},
        {"type": "page_view", "artist_id": "a1", "source": "web", "occurred_at": "2025-01-01T00:00:00"},
        {"type": "page_view", "artist_id": "a1", "source": "web", "properties": {"blob": "x" * 5000}},
        {"type": "sale", "artist_id": "a1", "source": "marketplace"},
        {"type": "page_view", "artist_id": "not an id!", "source": "web"},
        {"type": "page_view", "artist_id": "a1", "source": "web", "colour": "red"},
        "not an event",
    ]
    async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
        result = await producer.track_events([good[0], *bad[:5], good[1], *bad[5:], good[2]])
        assert (result.accepted, result.refused, result.stored_in) == (3, len(bad), "redis")
        reasons = [error.reason for error in result.errors]
        for expected in (
            "type: 'concert' is not an event type",
            "a 'stream' event needs 'track_id'",
            "occurred_at: is older than 7 days",
            "occurred_at: is more than 300 s in the future",
            "occurred_at: needs a timezone",
            "properties: are 5011 bytes as JSON, over the 2048-byte limit",
            "a 'sale' event needs 'amount_cents'",
            "artist_id: 'not an id!' is not valid",
            "colour: unknown field",
            "not an event object",
        ):
            assert sum(expected in reason for reason in reasons) == 1, (expected, reasons)
        assert [error.index for error in result.errors] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]

        with pytest.raises(InvalidEvent, match="needs 'track_id'"):
            await producer.track_event(type="play", artist_id="a1", source="web")
        event_id = await producer.track_event(type="link_click", artist_id="a1", source="instagram")
        assert event_id
        with pytest.raises(JobValidationError, match="101 events in one call, over the limit of 100"):
            await producer.track_events(make_events(101, prefix="toomany"))
        assert ingest_of(producer).stats["refused"] == len(bad) + 1
        assert ingest_of(producer).stats["accepted"] == 4


async def test_every_event_is_stored_once_through_redis(
    redis_server: RedisServer, clean_analytics: str
) -> None:
    settings = analytics_settings(redis_server.url, clean_analytics)
    events = make_events(20_000, prefix="up")
    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
            for i in range(0, len(events), 2000):
                assert (await producer.track_events(events[i : i + 2000])).stored_in == "redis"
            await producer.track_events(events[:3000])  # a retried request: the same ids again
            # One event per call, from many concurrent callers (web requests): they share pushes.
            ids = await asyncio.gather(
                *(
                    producer.track_event(
                        type="stream", artist_id="a1", track_id="t1", source="web", event_id=f"up-one-{i}"
                    )
                    for i in range(500)
                )
            )
            assert sorted(ids) == sorted(f"up-one-{i}" for i in range(500))
            await eventually(lambda: _count_is(clean_analytics, "up", 20_500), what="all events stored")
            assert ingest_of(producer).stats["to_redis"] == 23_500
    finally:
        await worker.stop()
    assert Counter(await stored_ids(clean_analytics, "up")).most_common(1)[0][1] == 1


async def test_a_large_backlog_queues_a_flush_without_waiting_for_the_schedule(
    redis_server: RedisServer, clean_analytics: str
) -> None:
    settings = analytics_settings(redis_server.url, clean_analytics, analytics_flush_trigger_events=5000)
    # The same jobs and plug-in, without the flush every second.
    unscheduled = Registry(list(TEST_ANALYTICS_REGISTRY), plugins=TEST_ANALYTICS_REGISTRY.plugins)
    async with Producer(settings, registry=unscheduled) as producer:
        # No worker yet: the flushes a producer queues stay in the queue where we can count them.
        started = time.monotonic()
        for i in range(5):
            await producer.track_events(make_events(1000, prefix=f"trigger-{i}"))
        assert time.monotonic() - started < 1.0  # all inside one trigger second
        queued = await raw_redis(settings).zrange(queue_key(settings, "bulk"), 0, -1)  # batch work
        flushes = [job_id for job_id in queued if job_id.startswith(b"analytics-flush:")]
        # One for the first push; one at once when the fifth push made the backlog 5,000 events.
        # Without the backlog trigger the second would wait for the end of the second (trailing).
        assert len(flushes) == 2, queued
        service = WorkerService(settings, registry=unscheduled, handle_signals=False)
        worker = RunningWorker(service, asyncio.create_task(service.run()))
        try:
            await eventually(lambda: _count_is(clean_analytics, "trigger", 5000), timeout=10)
        finally:
            await worker.stop()


async def test_every_event_is_stored_once_while_redis_is_down(clean_analytics: str) -> None:
    # No Redis at all: the producer's buffer is drained into Postgres by the flush job, inline.
    settings = analytics_settings("", clean_analytics)
    events = make_events(10_000, prefix="down")
    async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
        for i in range(0, len(events), 1000):
            assert (await producer.track_events(events[i : i + 1000])).stored_in == "memory"
        await producer.track_events(events[:2000])
        # Drained as it fills and on a timer, not only at close.
        await eventually(lambda: _count_is(clean_analytics, "down", 10_000), what="buffer drained")
        tail = await producer.track_events(make_events(10, prefix="down-tail"))
        assert tail.stored_in == "memory"
    # close() wrote the last ones.
    assert await count_events(clean_analytics, "down") == 10_010
    assert ingest_of(producer).stats["memory_to_postgres"] == 12_010
    assert ingest_of(producer).buffer.empty


async def test_full_buffer_blocks_then_refuses_and_close_says_what_was_lost(
    redis_server: RedisServer,
) -> None:
    # Neither Redis nor Postgres: the buffer fills, callers wait, then get an error, never a drop.
    settings = analytics_settings(
        "",
        "postgresql://postgres@127.0.0.1:1/nowhere",
        analytics_buffer_max_bytes=64 * 1024,
        analytics_buffer_full_timeout_s=0.3,
        analytics_close_timeout_s=0.3,
    )
    producer = Producer(settings, registry=TEST_ANALYTICS_REGISTRY)
    await producer.start()
    accepted = 0
    error: EventBufferFull | None = None
    for i in range(20):
        try:
            accepted += (await producer.track_events(make_events(700, prefix=f"full{i}"))).accepted
        except EventBufferFull as exc:
            error = exc
            break
    assert error is not None
    assert "none of this call's 700 events was accepted" in str(error)
    assert 0 < accepted < 20 * 700
    assert ingest_of(producer).buffer.events == accepted
    assert ingest_of(producer).stats["not_accepted"] == 700
    with pytest.raises(EventsNotDelivered, match=f"{accepted} events held in memory"):
        await producer.close()


async def test_events_are_stored_once_across_a_redis_outage(
    own_redis: RedisServer, clean_analytics: str
) -> None:
    settings = analytics_settings(own_redis.url, clean_analytics)
    sent: list[str] = []
    where: list[str | None] = []

    async def send(producer: Producer, i: int) -> None:
        batch = make_events(500, prefix=f"switch-{i}")
        where.append((await producer.track_events(batch)).stored_in)
        sent.extend(e["event_id"] for e in batch)

    async def all_sent_stored() -> bool:
        return await count_events(clean_analytics, "switch") == len(sent)

    worker = await start_analytics_worker(settings)
    try:
        async with Producer(settings, registry=TEST_ANALYTICS_REGISTRY) as producer:
            for i in range(10):
                await send(producer, i)
            await eventually(all_sent_stored, what="stored by the worker before the outage")
            await send(producer, 10)  # likely still in Redis when it stops
            own_redis.stop()
            for i in range(11, 20):
                await send(producer, i)
            await producer.track_events(make_events(500, prefix="switch-3"))  # a retried request
            await eventually(
                lambda: _outage_batches_stored(clean_analytics), what="stored inline in the outage"
            )
            assert ingest_of(producer).stats["memory_to_postgres"] >= 9 * 500
            own_redis.restart()
            await eventually(lambda: _usable(producer), what="producer sees Redis again")
            for i in range(20, 30):
                await send(producer, i)
            await producer.track_events(make_events(500, prefix="switch-15"))
            await eventually(all_sent_stored, timeout=20, what="stored by the worker after the outage")
    finally:
        await worker.stop()
    assert Counter(where) == {"redis": 21, "memory": 9}
    assert sorted(await stored_ids(clean_analytics, "switch")) == sorted(sent)


async def _outage_batches_stored(dsn: str) -> bool:
    counts = [await count_events(dsn, f"switch-{i}") for i in range(11, 20)]
    return sum(counts) == 9 * 500


async def _count_is(dsn: str, prefix: str, expected: int) -> bool:
    return await count_events(dsn, prefix) == expected


async def _usable(producer: Producer) -> bool:
    return producer.backend.usable


async def test_rows_pushed_straight_to_redis_are_checked_before_they_are_stored(
    redis_server: RedisServer, clean_analytics: str
) -> None:
    settings = analytics_settings(redis_server.url, clean_analytics)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    year_2100_us = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    rows = [
        ["forged-ok-1", "page_view", "a1", None, "web", now_us, 1, 0, None],
        ["forged-huge-sale", "sale", "a1", None, "store", now_us, 1, 10**15, None],
        ["forged-unknown-type", "concert", "a1", None, "web", now_us, 1, 0, None],
        ["forged-in-2100", "page_view", "a1", None, "web", year_2100_us, 1, 0, None],
    ]
    chunk = orjson.dumps([WIRE_VERSION, rows])
    redis = raw_redis(settings)
    await redis.rpush(f"mb:analytics:{settings.queue_name}:events", chunk)  # type: ignore[misc]
    worker = await start_analytics_worker(settings)
    try:
        await eventually(lambda: _count_is(clean_analytics, "forged-ok", 1), what="the valid row stored")
        dead = await redis.lrange(f"mb:analytics:{settings.queue_name}:dead", 0, -1)  # type: ignore[misc]
    finally:
        await worker.stop()
    assert await stored_ids(clean_analytics, "forged") == ["forged-ok-1"]
    set_aside = [row[0] for raw in dead for row in orjson.loads(raw)[1]]
    assert sorted(set_aside) == ["forged-huge-sale", "forged-in-2100", "forged-unknown-type"]
