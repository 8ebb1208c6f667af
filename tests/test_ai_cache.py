"""The AI cache: Redis when it answers, process memory when it does not, never a failed job."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from core import Registry, define
from core.context import Mode
from devservices.redis import RedisServer
from jobs import REGISTRY, ai_track_tags
from tests.ai_fixtures import FakeAI, completion, log_events, make_ai_settings
from tests.ai_fixtures import fake_ai as fake_ai  # fixture, re-exported for pytest
from tests.conftest import eventually, make_settings, raw_redis, run_inline_job, running_producer
from worker.backend.cache import HybridCache, MemoryCache, make_cache
from worker.backend.keys import cache_key
from worker.producer import Producer

TAGS = {"genres": ["indie pop"], "moods": ["bright"]}
TRACK = {"title": "Midnight Drive", "description": "Dreamy synths over a driving beat."}


async def test_entries_go_to_redis_then_memory_during_an_outage_then_redis_again(
    own_redis: RedisServer, log_output: io.StringIO
) -> None:
    settings = make_settings(own_redis.url)
    cache = make_cache(settings)
    assert isinstance(cache, HybridCache)
    try:
        await cache.set("ai:one", b"1", 30)
        assert await raw_redis(settings).get(cache_key("ai:one")) == b"1"
        assert 0 < await raw_redis(settings).pttl(cache_key("ai:one")) <= 30_000
        assert await cache.get("ai:one") == b"1"
        assert len(cache.memory) == 0

        await asyncio.to_thread(own_redis.stop)
        assert await cache.get("ai:one") is None  # only Redis had it: a miss, not an error
        assert not cache.link.usable
        started = time.perf_counter()
        await cache.set("ai:two", b"2", 30)
        assert await cache.get("ai:two") == b"2"
        assert time.perf_counter() - started < 0.1  # breaker open: no waiting on the network
        assert len(cache.memory) == 1

        await asyncio.to_thread(own_redis.start)
        await eventually(lambda: cache.link.usable)
        await cache.set("ai:three", b"3", 30)
        assert await raw_redis(settings).get(cache_key("ai:three")) == b"3"
        assert await cache.get("ai:two") == b"2"  # written during the outage, still served
    finally:
        await cache.aclose()
    [down] = log_events(log_output, "redis unavailable")
    assert (down["role"], down["fallback"]) == ("cache", "memory")
    assert [e["role"] for e in log_events(log_output, "redis connected")] == ["cache", "cache"]


async def test_a_redis_that_refuses_writes_costs_a_miss_not_a_job(
    log_output: io.StringIO, fake_ai: FakeAI
) -> None:
    # Out of memory with no eviction: Redis is up but refuses every write, the cache's included.
    with RedisServer(extra_args=["--maxmemory", "1", "--maxmemory-policy", "noeviction"]) as full:
        settings = make_ai_settings(full.url, fake_ai)
        fake_ai.queue(completion(TAGS))
        result = await run_inline_job(settings, REGISTRY, "ai_track_tags", job_id="oom-1", kwargs=TRACK)
    assert result["output"] == TAGS
    [warning] = log_events(log_output, "cache command failed")
    assert warning["op"] == "set"
    assert "OutOfMemoryError" in warning["error"]


@pytest.mark.parametrize("mode", ["queued", "inline"])
async def test_cached_results_outlive_the_process_that_made_them_in_redis(
    mode: Mode, own_redis: RedisServer, fake_ai: FakeAI
) -> None:
    """Queued: a new worker finds the entry in Redis. Inline (no Redis): memory is per process."""
    settings = make_ai_settings(own_redis.url, fake_ai)
    fake_ai.default = completion(TAGS)
    results = []
    for _ in range(2):  # two producers (and workers) one after the other
        async with running_producer(settings, mode) as producer:
            results.append(await (await producer.enqueue_job(ai_track_tags, TRACK)).result(timeout=10))
    assert [r["cached"] for r in results] == ([False, True] if mode == "queued" else [False, False])


async def test_jobs_are_cached_in_memory_while_redis_is_down(
    own_redis: RedisServer, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    settings = make_ai_settings(own_redis.url, fake_ai)
    await asyncio.to_thread(own_redis.stop)
    fake_ai.queue(completion(TAGS))
    # Redis is down: with an inline policy (AI jobs spool by default) the producer runs the job
    # here, and the cache falls back to memory.
    inline_registry = Registry([define(ai_track_tags, timeout=300, max_tries=5, fallback="inline")])
    async with Producer(settings, registry=inline_registry) as producer:
        first = await producer.enqueue_job(ai_track_tags, TRACK)
        second = await producer.enqueue_job(ai_track_tags, TRACK)
        results = [await first.result(timeout=10), await second.result(timeout=10)]
    assert (first.mode, second.mode) == ("inline", "inline")
    assert [r["cached"] for r in results] == [False, True]
    assert results[1]["output"] == TAGS
    assert len(fake_ai.requests) == 1
    assert [e["ai_cached"] for e in log_events(log_output)] == [False, True]


async def test_cache_ttl_zero_turns_caching_off(own_redis: RedisServer, fake_ai: FakeAI) -> None:
    settings = make_ai_settings(own_redis.url, fake_ai, ai_cache_ttl=0)
    fake_ai.default = completion(TAGS)
    async with running_producer(settings, "inline") as producer:
        for _ in range(2):
            assert (await (await producer.enqueue_job(ai_track_tags, TRACK)).result(10))["cached"] is False
    assert len(fake_ai.requests) == 2


async def test_memory_cache_is_a_bounded_lru_with_expiry() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"a", 30)
    await cache.set("b", b"b", 30)
    assert await cache.get("a") == b"a"  # now most recently used
    await cache.set("c", b"c", 30)
    assert (await cache.get("a"), await cache.get("b"), await cache.get("c")) == (b"a", None, b"c")
    await cache.set("gone", b"x", 0.01)
    await asyncio.sleep(0.02)
    assert await cache.get("gone") is None


def test_without_redis_the_cache_is_memory_only() -> None:
    assert isinstance(make_cache(make_settings("")), MemoryCache)
