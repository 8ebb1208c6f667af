"""`Producer.enqueue_many`: validate everything first, pipelined batches, dedup, inline fallback."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from core.errors import EnqueueError, JobValidationError
from devservices.proxy import TcpProxy
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import RunningWorker, make_settings, raw_redis
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import keys
from worker.producer import Producer


async def test_one_bad_job_refuses_the_whole_call_before_anything_is_sent(settings: Settings) -> None:
    batch = [{"key": f"k{i}"} for i in range(250)] + [{"key": 7}]
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        with pytest.raises(JobValidationError, match="argument 'key'"):
            await producer.enqueue_many("record", batch)
        assert await raw_redis(producer.settings).zcard(settings.queue_name) == 0
    assert RUNS == []


async def test_job_ids_must_match_the_jobs(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        with pytest.raises(JobValidationError, match="2 job ids for 3 jobs"):
            await producer.enqueue_many("record", [{"key": "a"}] * 3, job_ids=["x", "y"])


async def test_duplicates_within_the_call_and_with_queued_jobs(settings: Settings) -> None:
    small = settings.model_copy(update={"worker_batch_size": 2})  # several pipelined script calls
    async with Producer(small, registry=TEST_REGISTRY) as producer:
        await producer.enqueue_job("record", {"key": "first"}, job_id="bulk-0")
        ids = ["bulk-0", "bulk-1", "bulk-2", "bulk-1", "bulk-3"]
        handles = await producer.enqueue_many("record", [{"key": i} for i in ids], job_ids=ids)
        assert [h.job_id for h in handles] == ids
        assert [h.duplicate for h in handles] == [True, False, False, True, False]
        assert {h.mode for h in handles} == {"queued"}
        assert await raw_redis(producer.settings).zcard(settings.queue_name) == 4


async def test_bulk_jobs_run_and_their_results_are_readable(
    settings: Settings, worker: RunningWorker
) -> None:
    small = settings.model_copy(update={"worker_batch_size": 7})
    async with Producer(small, registry=TEST_REGISTRY) as producer:
        handles = await producer.enqueue_many("record", [{"key": f"b{i}"} for i in range(120)])
        results = [await h.result(timeout=10) for h in handles]
    assert [r["key"] for r in results] == [f"b{i}" for i in range(120)]
    assert sorted(key for key, _, _ in RUNS) == sorted(f"b{i}" for i in range(120))


async def test_without_redis_every_job_runs_inline(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": SecretStr("")})
    async with Producer(down, registry=TEST_REGISTRY) as producer:
        handles = await producer.enqueue_many("record", [{"key": "x"}, {"key": "y"}])
        assert [h.mode for h in handles] == ["inline", "inline"]
        assert [(await h.result())["key"] for h in handles] == ["x", "y"]
        with pytest.raises(EnqueueError, match="deferred jobs need Redis and REDIS_URL is not configured"):
            await producer.enqueue_many("record", [{"key": "a"}, {"key": "b"}], defer_by=5)
    assert [key for key, _, _ in RUNS] == ["x", "y"]


async def test_redis_killed_before_a_bulk_enqueue_runs_each_job_inline_once(database_url: str) -> None:
    with RedisServer(persistent=True, extra_args=["--appendfsync", "always"]) as server:
        settings = make_settings(server.url, database_url=database_url)
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            await producer.enqueue_job("record", {"key": "warm"}, job_id="warm")  # a pooled connection
            server.kill()
            handles = await producer.enqueue_many("record", [{"key": f"d{i}"} for i in range(5)])
            assert [h.mode for h in handles] == ["inline"] * 5
            server.restart()
            await producer.backend.wait_until_up()
            # Nothing of the failed batch is left queued behind the inline runs.
            assert await raw_redis(producer.settings).zcard(settings.queue_name) == 1
            assert await raw_redis(producer.settings).exists(keys.job_key(handles[0].job_id)) == 0
    assert [key for key, _, _ in RUNS] == [f"d{i}" for i in range(5)]


async def test_generated_ids_are_unique_uuid4_hex(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handles = await producer.enqueue_many("record", [{"key": "u"}] * 500)
    ids = [h.job_id for h in handles]
    assert len(set(ids)) == 500
    assert all(uuid.UUID(hex=job_id).version == 4 and uuid.UUID(hex=job_id).hex == job_id for job_id in ids)


async def test_a_reply_lost_while_loading_the_script_leaves_no_job_behind() -> None:
    """First bulk call on a fresh Redis: every call answers NOSCRIPT, the script is loaded and
    the calls resent, and then the network dies. Those jobs may or may not have landed: each
    runs inline (a copy that did land is withdrawn later); none is reported as refused."""
    with RedisServer() as server:
        async with TcpProxy("127.0.0.1", server.port) as proxy:
            settings = make_settings(proxy.url_for(server.url), worker_batch_size=2)
            async with Producer(settings, registry=TEST_REGISTRY) as producer:
                proxy.blackhole_after(b"SCRIPT")  # the load reaches Redis; nothing comes back
                handles = await producer.enqueue_many("record", [{"key": f"n{i}"} for i in range(5)])
            assert [h.mode for h in handles] == ["inline"] * 5
            assert sorted(key for key, _, _ in RUNS) == [f"n{i}" for i in range(5)]


async def test_a_backlog_of_100000_jobs_is_queued_not_run_inline(own_redis: RedisServer) -> None:
    # One write of 20 MB cannot drain within the 0.25 s socket timeout: sent whole, the call
    # timed out and every job ran inline in the caller. It goes out in waves.
    queue = f"arq:queue:big-{uuid.uuid4().hex[:6]}"
    settings = make_settings(own_redis.url, queue_name=queue)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handles = await producer.enqueue_many("record", [{"key": "x" * 100}] * 100_000)
        assert producer.inline_count == 0
    assert {h.mode for h in handles} == {"queued"}
    assert await raw_redis(own_redis.url).zcard(queue) == 100_000
    assert RUNS == []
