"""Producer behaviours beyond the two-mode contract: dedup, deferral, background inline runs."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from pydantic import SecretStr

from core.errors import EnqueueError
from settings import Settings
from tests.conftest import RunningWorker, eventually, raw_redis
from tests.sample_jobs import RUNS, TEST_REGISTRY, record
from worker.producer import Producer
from worker.producer.facade import _job_id  # the id source: no public way to fork it


async def test_same_job_id_is_queued_once(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        first = await producer.enqueue_job("record", {"key": "a"}, job_id="dedup-1")
        second = await producer.enqueue_job("record", {"key": "b"}, job_id="dedup-1")
        assert (first.duplicate, second.duplicate) == (False, True)
        assert await raw_redis(producer.settings).zcard(settings.queue_name) == 1


async def test_result_of_a_duplicate_is_the_first_jobs(settings: Settings, worker: RunningWorker) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        first = await producer.enqueue_job("record", {"key": "first"}, job_id="dedup-2")
        assert (await first.result(timeout=5))["key"] == "first"
        again = await producer.enqueue_job("record", {"key": "second"}, job_id="dedup-2")
        assert again.duplicate
        assert (await again.result(timeout=5))["key"] == "first"
    assert [key for key, _, _ in RUNS] == ["first"]


async def test_deferred_job_waits_and_is_never_run_early(settings: Settings, worker: RunningWorker) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        started = time.monotonic()
        handle = await producer.enqueue_job("record", {"key": "later"}, defer_by=0.5)
        await handle.result(timeout=5)
        assert time.monotonic() - started >= 0.5

    # Redis down: the deferred job waits in the spool; with Postgres down too, it is refused.
    down = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")})
    async with Producer(down, registry=TEST_REGISTRY) as producer:
        spooled = await producer.enqueue_job("record", {"key": "spooled"}, defer_by=10)
        assert spooled.mode == "spooled"
    disabled = settings.model_copy(update={"redis_url": SecretStr("")})
    async with Producer(disabled, registry=TEST_REGISTRY) as producer:
        with pytest.raises(EnqueueError, match="deferred jobs need Redis and REDIS_URL is not configured"):
            await producer.enqueue_job("record", {"key": "never"}, defer_by=10)
    both_down = down.model_copy(update={"database_url": SecretStr("postgresql://postgres@127.0.0.1:1/x")})
    async with Producer(both_down, registry=TEST_REGISTRY) as producer:
        with pytest.raises(EnqueueError, match="the deferred job can be neither queued nor kept"):
            await producer.enqueue_job("record", {"key": "never"}, defer_by=10)
    assert [key for key, _, _ in RUNS] == ["later"]


async def test_background_inline_runs_are_bounded_and_drained_on_close(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": SecretStr(""), "inline_max_background": 2})
    peak = 0
    producer = Producer(down, registry=TEST_REGISTRY)

    async def watch() -> None:
        nonlocal peak
        while True:  # jobs the producer is running now, as it counts them itself
            peak = max(peak, producer.metrics.recent.running)
            await asyncio.sleep(0.005)

    await producer.start()
    watcher = asyncio.create_task(watch())
    handles = [await producer.enqueue_job("sleepy", {"seconds": 0.1}, background=True) for _ in range(5)]
    assert not handles[-1].done  # returned before the job finished
    await producer.close()  # waits for every background job
    watcher.cancel()
    assert all(h.done for h in handles)
    assert [await h.result() for h in handles] == ["woke"] * 5
    assert peak == 2  # the bound was reached and held


async def test_inline_is_the_default_and_waits(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": SecretStr("")})
    async with Producer(down, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue(record, key="now")
        assert handle.mode == "inline"
        assert handle.done
        assert producer.inline_count == 1


async def test_a_job_queues_its_follow_up_the_way_its_own_mode_allows(producer: Producer) -> None:
    handle = await producer.enqueue_job("follow_up", {"key": "next"})
    outcome = await handle.result(timeout=5)
    mode = handle.mode
    assert outcome == ("queued" if mode == "queued" else "inline")
    # The follow-up ran, queued on the worker or inline here.
    await eventually(lambda: ("next", mode, 1) in RUNS, what="the follow-up ran")


def test_a_forked_process_never_hands_out_its_parents_job_ids() -> None:
    # Web servers fork workers after import; ids come from a batch read ahead, which a child must
    # not share (two jobs with one id: the second enqueue would be taken for a duplicate).
    _job_id(None)  # the parent now holds a batch of spare ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running the parent's cleanup
        os.write(write, _job_id(None).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    parent_ids = {_job_id(None) for _ in range(300)}  # past the end of the batch it held
    assert len(child_id) == 32
    assert child_id not in parent_ids
