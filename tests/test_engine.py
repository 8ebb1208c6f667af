"""The worker engine: wake-up instead of polling, deferred jobs, batched outcomes, dead workers."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import orjson
from arq.jobs import Job

from settings import Settings
from tests.conftest import eventually, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import ClaimedJob, ClaimQueue, keys
from worker.engine import WorkerService
from worker.producer import Producer


async def _status_is(producer: Producer, job_id: str, status: str) -> bool:
    return bool((await producer.status(job_id))["status"] == status)


def _idle_settings(settings: Settings) -> Settings:
    # A block far longer than any test: only the wake-up can start these jobs in time.
    return settings.model_copy(update={"worker_idle_block": 60.0, "worker_health_interval": 600.0})


async def test_job_enqueued_into_an_idle_worker_is_woken_and_runs(settings: Settings) -> None:
    settings = _idle_settings(settings)
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            await asyncio.sleep(0.3)  # the worker is now blocked on its wake-up
            for key in ("one", "two"):
                handle = await producer.enqueue_job("record", {"key": key})
                assert (await handle.result(timeout=5))["key"] == key
                await asyncio.sleep(0.1)
    finally:
        await worker.stop()
    assert [key for key, _, _ in RUNS] == ["one", "two"]


async def test_deferred_jobs_run_in_order_and_never_early(settings: Settings) -> None:
    settings = _idle_settings(settings)
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            enqueued = time.time()
            late = await producer.enqueue_job("ping", {"message": "late"}, defer_by=0.6)
            early = await producer.enqueue_job("ping", {"message": "early"}, defer_by=0.3)
            started = {r["message"]: r["at"] for r in [await early.result(5), await late.result(5)]}
    finally:
        await worker.stop()
    early_at = datetime.fromisoformat(started["early"]).timestamp() - enqueued
    late_at = datetime.fromisoformat(started["late"]).timestamp() - enqueued
    assert 0.3 <= early_at < late_at
    assert late_at >= 0.6


async def test_deferred_jobs_start_on_time_not_on_redis_clock_tick(settings: Settings) -> None:
    # An idle worker's BZPOPMIN times out on Redis's clock tick (10 a second): waiting for a
    # deferred job's time that way started it up to 100 ms late (50 ms typically). The worker
    # keeps the time itself.
    settings = _idle_settings(settings)
    worker = await start_worker(settings)
    lateness = []
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            await asyncio.sleep(0.2)
            for i, defer_by in enumerate((0.23, 0.31, 0.27, 0.36, 0.22, 0.33, 0.29)):
                due = time.time() + defer_by
                handle = await producer.enqueue_job("stamp", {"key": f"d{i}"}, defer_by=defer_by)
                started = (await handle.result(timeout=5))["start"]
                lateness.append(started - due)
    finally:
        await worker.stop()
    assert min(lateness) >= -0.002, lateness  # never early (the score is in whole milliseconds)
    assert sorted(lateness)[len(lateness) // 2] < 0.02, lateness


async def test_a_due_job_still_locked_is_run_when_its_lock_ends(settings: Settings) -> None:
    # Its worker died a moment ago (or is late extending the lock): the claim finds it due but
    # locked and moves it to the lock's end. The claiming worker must look again then, not after
    # its idle block (60 s here).
    settings = _idle_settings(settings)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("stamp", {"key": "locked"})
        await raw_redis(settings).set(keys.in_progress_key(handle.job_id), "a-dead-worker", px=400)
        await raw_redis(settings).delete(keys.wake_key(settings.queue_name))  # no wake-up to help
        locked_at = time.time()
        worker = await start_worker(settings)
        try:
            started = (await handle.result(timeout=10))["start"]
        finally:
            await worker.stop()
    assert 0.35 <= started - locked_at < 2.0, started - locked_at


async def test_batched_outcomes_are_readable_by_status_and_by_arq(settings: Settings) -> None:
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            handles = await producer.enqueue_many("record", [{"key": f"r{i}"} for i in range(60)])
            failing = await producer.enqueue_job("refuse", {"reason": "no"})
            for handle in handles:
                await handle.result(timeout=10)
            report = await producer.status(handles[7].job_id)
            assert report["status"] == "complete"
            assert report["result"] == {"key": "r7", "mode": "queued"}
            info = await Job(
                handles[7].job_id,
                raw_redis(producer.settings),
                _queue_name=settings.queue_name,
                _deserializer=orjson.loads,
            ).result_info()
            assert info is not None
            assert (info.success, info.function, info.job_try) == (True, "record", 1)
            # A failure for good is a dead letter too, which status reports.
            await eventually(lambda: _status_is(producer, failing.job_id, "dead"))
            failed = await producer.status(failing.job_id)
            assert failed["error"]["type"] == "PermanentError"
            # Nothing is left behind but the results.
            assert await raw_redis(producer.settings).zcard(settings.queue_name) == 0
            assert await raw_redis(producer.settings).exists(keys.retry_key(handles[7].job_id)) == 0
            assert await raw_redis(producer.settings).exists(keys.in_progress_key(handles[7].job_id)) == 0
    finally:
        await worker.stop()


async def test_job_of_a_dead_worker_runs_again_once_its_lock_expires(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record", {"key": "orphan"})
        # A worker claims it and dies: its lock (and the job's visibility) lasts 0.4 s.
        claimed = await producer.backend.claim(
            [ClaimQueue(settings.queue_name)], limit=10, lock_ms=400, token="dead-worker"
        )
        assert [job.job_id for job in claimed.jobs] == [handle.job_id]
        report = await producer.status(handle.job_id)
        assert report["status"] == "in_progress"
        worker = await start_worker(_idle_settings(settings))
        try:
            assert (await handle.result(timeout=5))["key"] == "orphan"
        finally:
            await worker.stop()
    assert RUNS == [("orphan", "queued", 1)]  # the dead worker's run was interrupted, not a try


async def test_a_job_whose_runs_keep_being_interrupted_fails_after_its_budget(settings: Settings) -> None:
    settings = settings.model_copy(update={"worker_max_interruptions": 2})
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record", {"key": "poison"})
        for _ in range(3):  # three workers claim it and die
            claimed = await producer.backend.claim(
                [ClaimQueue(settings.queue_name)], limit=1, lock_ms=1, token="dead"
            )
            assert len(claimed.jobs) == 1
            assert claimed.jobs[0].job_try == 1  # an interrupted run is not a try
            await asyncio.sleep(0.01)  # the 1 ms lock runs out
        await raw_redis(producer.settings).delete(keys.in_progress_key(handle.job_id))
        worker = await start_worker(settings)
        try:
            await eventually(
                lambda: _status_is(producer, handle.job_id, "dead"), what="the job failed for good"
            )
            report = await producer.status(handle.job_id)
        finally:
            await worker.stop()
    assert report["error"]["type"] == "JobExecutionFailed"
    assert "interrupted 3 times" in report["error"]["message"]
    assert "WORKER_MAX_INTERRUPTIONS=2 ran out" in report["error"]["message"]
    assert RUNS == []


async def test_interrupted_runs_do_not_use_up_a_healthy_jobs_tries(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record", {"key": "survivor"})  # max_tries=3
        for _ in range(3):
            await producer.backend.claim([ClaimQueue(settings.queue_name)], limit=1, lock_ms=1, token="dead")
            await asyncio.sleep(0.01)
        worker = await start_worker(settings)
        try:
            assert (await handle.result(timeout=10))["key"] == "survivor"
        finally:
            await worker.stop()
    assert RUNS == [("survivor", "queued", 1)]  # three interruptions, and still its first try


async def test_lost_claim_is_released_for_another_try(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record", {"key": "lost"})
        backend, queue = producer.backend, settings.queue_name
        now_ms = int(time.time() * 1000)
        await backend.claim([ClaimQueue(queue)], limit=5, lock_ms=60_000, token="me", now_ms=now_ms)
        assert await backend.release([queue], now_ms + 60_000, "other") == 0  # someone else's: kept
        assert await backend.release([queue], now_ms + 60_000, "me") == 1
        again = await backend.claim([ClaimQueue(queue)], limit=5, lock_ms=60_000, token="me")
        assert [(job.job_id, job.job_try) for job in again.jobs] == [(handle.job_id, 1)]


async def test_worker_writes_arqs_health_key(settings: Settings) -> None:
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            handle = await producer.enqueue_job("record", {"key": "h"})
            await handle.result(timeout=5)
            health = await raw_redis(producer.settings).get(keys.health_check_key(settings.queue_name))
            assert health is not None
            assert b"j_ongoing=" in health
            assert b"queued=" in health
    finally:
        await worker.stop()


async def test_job_still_running_after_the_grace_runs_again(settings: Settings) -> None:
    settings = settings.model_copy(update={"worker_shutdown_grace": 0.2})
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("ping", {"message": "slow", "sleep": 1.0})
        first = await start_worker(settings)
        await eventually(lambda: _status_is(producer, handle.job_id, "in_progress"), what="the job started")
        started = time.monotonic()
        assert await first.stop() == 0
        assert time.monotonic() - started < 0.9  # cancelled after the grace, not finished
        report = await producer.status(handle.job_id)
        assert report["status"] == "queued"  # due again at once
        second = await start_worker(settings)
        try:
            result = await handle.result(timeout=5)
        finally:
            await second.stop()
    assert (result["message"], result["try"]) == ("slow", 1)  # a run cancelled at shutdown is not a try


async def test_records_that_are_not_arq_job_records_fail_without_running(settings: Settings) -> None:
    records = {
        "list": b"[1, 2]",
        "no-function": b'{"k": {}, "et": 1}',
        "positional": b'{"f": "record", "a": ["x"], "k": {}, "et": 1}',
    }
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        redis = raw_redis(producer.settings)
        now_ms = int(time.time() * 1000)
        for job_id, raw in records.items():
            await redis.set(keys.job_key(job_id), raw)
            await redis.zadd(settings.queue_name, {job_id: now_ms})
        # A valid record with an absurd enqueue time still runs.
        await redis.set(keys.job_key("odd-time"), b'{"f": "record", "a": [], "k": {"key": "t"}, "et": 1e300}')
        await redis.zadd(settings.queue_name, {"odd-time": now_ms})
        service = WorkerService(settings, burst=True, registry=TEST_REGISTRY, handle_signals=False)
        assert await asyncio.wait_for(service.run(), 10) == 0
        reports = {job_id: await producer.status(job_id) for job_id in records}
        odd = await producer.status("odd-time")
    assert {r["status"] for r in reports.values()} == {"dead"}  # failed for good, dead-lettered
    assert reports["list"]["error"]["type"] == "DeserializationError"
    assert reports["no-function"]["error"]["type"] == "DeserializationError"
    assert reports["positional"]["error"]["message"] == "jobs take keyword arguments only"
    assert odd["status"] == "complete"
    assert RUNS == [("t", "queued", 1)]


async def test_a_stopping_worker_gives_back_the_job_it_claimed_ahead_unrun_and_untried(
    settings: Settings,
) -> None:
    # One slot and short jobs: the worker claims one job beyond its slot and holds it.
    settings = settings.model_copy(update={"worker_max_jobs": 1, "worker_shutdown_grace": 5.0})
    worker = await start_worker(settings)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        for handle in [await producer.enqueue_job("record", {"key": f"warm{i}"}) for i in range(5)]:
            await handle.result(timeout=5)  # the worker has seen its jobs are short
        blocker = await producer.enqueue_job("stamp", {"key": "blocker", "seconds": 1.0})
        await eventually(lambda: _status_is(producer, blocker.job_id, "in_progress"))
        held = await producer.enqueue_job("record", {"key": "held"})
        redis = raw_redis(producer.settings)
        await eventually(lambda: redis.exists(keys.in_progress_key(held.job_id)), what="the job held")
        assert ("held", "queued", 1) not in RUNS  # claimed, not started: its slot is taken
        await worker.stop()  # the blocker finishes within the grace; the held job goes back
        assert await redis.exists(keys.in_progress_key(held.job_id)) == 0
        assert ("held", "queued", 1) not in RUNS
        again = await start_worker(settings)
        try:
            assert (await held.result(timeout=5))["key"] == "held"
        finally:
            await again.stop()
    assert RUNS.count(("held", "queued", 1)) == 1  # still its first try, run once


async def test_a_worker_running_long_jobs_does_not_claim_ahead(settings: Settings) -> None:
    settings = settings.model_copy(update={"worker_max_jobs": 1, "worker_claim_ahead": 0.05})
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            warm = await producer.enqueue_job("stamp", {"key": "warm", "seconds": 0.2})
            await warm.result(timeout=5)  # attempts average 0.2 s, over WORKER_CLAIM_AHEAD
            long = await producer.enqueue_job("stamp", {"key": "long", "seconds": 1.0})
            await eventually(lambda: _status_is(producer, long.job_id, "in_progress"))
            waiting = await producer.enqueue_job("record", {"key": "waiting"})
            await asyncio.sleep(0.3)
            # Left in the queue, where another worker can start it now.
            assert await raw_redis(producer.settings).exists(keys.in_progress_key(waiting.job_id)) == 0
            assert (await producer.status(waiting.job_id))["status"] == "queued"
            assert (await waiting.result(timeout=5))["key"] == "waiting"
    finally:
        await worker.stop()


async def test_a_job_cancelled_before_its_first_step_frees_its_slot(settings: Settings) -> None:
    """A stopping worker cancels what is still running; a job task cancelled before the loop ever
    ran it never runs its own bookkeeping, and the slot it held must still come back."""
    service = WorkerService(settings, registry=TEST_REGISTRY, handle_signals=False)
    engine = service.worker
    try:
        job = ClaimedJob(job_id="j-never", score=0, record=None, job_try=1, queue=engine.plan.keys[0])
        engine._hold(job)
        engine._start_held()
        (task,) = engine.tasks.values()
        task.cancel()  # before its first step
        engine.stopping = True
        await engine._finish_running()
        assert task.cancelled()
        assert (engine.tasks, engine.controls, sum(engine.running.values())) == ({}, {}, 0)
    finally:
        await service.runtime.aclose()
