"""Concurrent single enqueues share pipelined writes (group commit), and each caller still gets
its own outcome: queued, a duplicate, or its own refusal while the others in its group queue."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from core.errors import BackendRefused
from devservices.redis import RedisServer
from tests.conftest import make_settings, raw_redis
from tests.sample_jobs import TEST_REGISTRY
from worker.backend import EnqueueReply, RedisBackend
from worker.backend.link import Lane, RedisLink
from worker.backend.scripts import Script
from worker.producer import Producer


async def _writes(server: RedisServer) -> int:
    stats = await raw_redis(server.url).info("stats")
    return int(stats["total_writes_processed"])


async def test_a_hundred_concurrent_enqueues_take_a_few_round_trips(own_redis: RedisServer) -> None:
    queue = f"arq:queue:grouped-{uuid.uuid4().hex[:6]}"
    async with Producer(make_settings(own_redis.url, queue_name=queue), registry=TEST_REGISTRY) as producer:
        await producer.enqueue_job("record", {"key": "warm"})  # connection and script loaded
        before = await _writes(own_redis)
        handles = await asyncio.gather(
            *(producer.enqueue_job("record", {"key": str(i)}, job_id=f"g-{i}") for i in range(100))
        )
        after = await _writes(own_redis)
        again = await asyncio.gather(
            *(producer.enqueue_job("record", {"key": str(i)}, job_id=f"g-{i}") for i in range(3))
        )

    assert [h.mode for h in handles] == ["queued"] * 100
    assert not any(h.duplicate for h in handles)
    assert [h.duplicate for h in again] == [True, True, True]  # each caller's own reply
    assert await raw_redis(own_redis.url).zcard(queue) == 101
    # One write each for the first two callers (each finds a connection free), one or two for
    # the other 98 (Redis reads their 30 KB in 16 KB pieces), and the INFO call itself.
    assert after - before <= 5, f"{after - before} round trips for 100 concurrent enqueues"


async def test_a_refused_call_fails_only_its_own_caller(own_redis: RedisServer) -> None:
    queue = f"arq:queue:grouped-{uuid.uuid4().hex[:6]}"
    backend = RedisBackend(make_settings(own_redis.url, queue_name=queue), role="test")
    await backend.start()
    broken = f"{queue}:broken"
    await raw_redis(own_redis.url).set(broken, "not a sorted set")  # ZADD here is WRONGTYPE
    try:
        calls = [
            backend.enqueue(
                broken if i == 5 else queue, job_id=f"r-{i}", name="record", kwargs={"key": str(i)}
            )
            for i in range(20)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await backend.aclose()

    refused = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert refused == [5]
    assert isinstance(results[5], BackendRefused)
    assert "WRONGTYPE" in str(results[5])
    assert [r for i, r in enumerate(results) if i != 5] == [EnqueueReply.QUEUED] * 19
    assert await raw_redis(own_redis.url).zcard(queue) == 19


async def test_callers_of_a_group_all_hear_that_redis_is_gone(own_redis: RedisServer) -> None:
    queue = f"arq:queue:grouped-{uuid.uuid4().hex[:6]}"
    backend = RedisBackend(make_settings(own_redis.url, queue_name=queue), role="test")
    await backend.start()
    await backend.enqueue(queue, job_id="first", name="record", kwargs={"key": "0"})
    own_redis.stop()
    try:
        results = await asyncio.gather(
            *(
                backend.enqueue(queue, job_id=f"d-{i}", name="record", kwargs={"key": str(i)})
                for i in range(10)
            ),
            return_exceptions=True,
        )
    finally:
        await backend.aclose()
    # Nothing is silently taken for queued: every caller gets an error it can fall back on.
    assert all(isinstance(r, Exception) for r in results), results
    assert {type(r).__name__ for r in results} <= {"NotSent", "ReplyLost"}


async def test_a_connection_the_server_closed_while_idle_is_replaced(own_redis: RedisServer) -> None:
    # Enqueues keep a connection of their own; one Redis closed (a server timeout, CLIENT KILL)
    # while it sat idle must be noticed and replaced, not fail the next job over to inline.
    queue = f"arq:queue:grouped-{uuid.uuid4().hex[:6]}"
    async with Producer(make_settings(own_redis.url, queue_name=queue), registry=TEST_REGISTRY) as producer:
        await producer.enqueue_job("record", {"key": "before"})
        await raw_redis(own_redis.url).client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.3)
        handle = await producer.enqueue_job("record", {"key": "after"})
        assert producer.inline_count == 0
    assert handle.mode == "queued"
    assert await raw_redis(own_redis.url).zcard(queue) == 2


async def test_many_callers_settle_into_two_groups_that_take_turns(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While Redis runs one group, the callers the other group answered prepare their next
    # calls: two cohorts of about half, not one big group and a trail of groups of one.
    groups: list[int] = []
    send = RedisLink.scripts

    async def counted(self: RedisLink, script: Script, calls: Any, *, lane: Lane | None = None) -> list[Any]:
        groups.append(len(calls))
        return await send(self, script, calls, lane=lane)

    queue = f"arq:queue:grouped-{uuid.uuid4().hex[:6]}"
    async with Producer(make_settings(own_redis.url, queue_name=queue), registry=TEST_REGISTRY) as producer:
        await producer.enqueue_job("record", {"key": "warm"})
        monkeypatch.setattr(RedisLink, "scripts", counted)

        async def caller(c: int) -> None:
            for i in range(10):
                await producer.enqueue_job("record", {"key": f"{c}-{i}"})

        await asyncio.gather(*(caller(c) for c in range(100)))

    assert sum(groups) == 1000
    in_halves = sum(size for size in groups if 25 <= size <= 75)
    assert in_halves >= 800, f"group sizes: {groups}"
    assert await raw_redis(own_redis.url).zcard(queue) == 1001
