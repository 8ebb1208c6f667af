"""The queue backend's read side against a real Redis: counts, pages of jobs by state, one job,
worker snapshots, all without scanning the keyspace; and its key layout is arq's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from arq import constants

from core.codec import encode_job
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import make_settings, raw_redis
from worker.backend import ClaimQueue, Finished, JobState, NewJob, RedisBackend, keys

QUEUE = "arq:queue:read-side"
FAILED_RESULT = b'{"s": false, "f": "record", "r": {"__error__": {"type": "E", "message": "m"}}}'


@pytest.fixture
async def backend(own_redis: RedisServer) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(make_settings(own_redis.url, queue_name=QUEUE), role="test")
    await backend.start()
    yield backend
    await backend.aclose()


def _settings(backend: RedisBackend) -> Settings:
    return backend.settings


def test_job_keys_are_arqs() -> None:
    assert constants.job_key_prefix == keys.JOB_PREFIX
    assert constants.in_progress_key_prefix == keys.IN_PROGRESS_PREFIX
    assert constants.result_key_prefix == keys.RESULT_PREFIX
    assert constants.retry_key_prefix == keys.RETRY_PREFIX
    assert keys.health_check_key("q") == "q" + constants.health_check_key_suffix


async def test_counts_and_pages_follow_a_job_through_its_states(backend: RedisBackend) -> None:
    now = int(time.time() * 1000)
    due = [
        NewJob(f"due-{i}", encode_job("record", {"key": i}, enqueue_ms=now), now - 10 + i) for i in range(5)
    ]
    later = [
        NewJob(f"later-{i}", encode_job("record", {"key": i}, enqueue_ms=now), now + 60_000) for i in range(3)
    ]
    await backend.enqueue_many(QUEUE, [*due, *later], batch_size=100)
    await raw_redis(_settings(backend)).set(keys.job_key("forged"), b"\x80\x04not json")
    await raw_redis(_settings(backend)).zadd(QUEUE, {"forged": now + 30_000})

    counts = await backend.counts(QUEUE)
    assert (counts.queued, counts.deferred, counts.in_progress) == (5, 4, 0)

    page = await backend.jobs(QUEUE, JobState.QUEUED, offset=1, limit=2)
    assert [v.job_id for v in page] == ["due-1", "due-2"]  # oldest first, paged
    assert [v.record.kwargs if v.record else None for v in page] == [{"key": 1}, {"key": 2}]

    claimed = await backend.claim([ClaimQueue(QUEUE)], limit=2, lock_ms=30_000, token="w1")
    assert [j.job_id for j in claimed.jobs] == ["due-0", "due-1"]
    # The worker's snapshot says what it runs (it writes one every 10 s while busy).
    snapshot = {"worker": "w1", "queue": QUEUE, "running_ids": ["due-0", "due-1"]}
    await backend.publish_snapshot("w1", orjson.dumps(snapshot), 60_000)
    counts = await backend.counts(QUEUE)
    assert (counts.queued, counts.deferred, counts.in_progress) == (3, 4, 2)
    running = await backend.jobs(QUEUE, JobState.IN_PROGRESS)
    assert [(v.job_id, v.record.name if v.record else None) for v in running] == [
        ("due-0", "record"),
        ("due-1", "record"),
    ]
    deferred = await backend.jobs(QUEUE, JobState.DEFERRED)
    assert [v.job_id for v in deferred] == ["forged", "later-0", "later-1", "later-2"]  # not the running ones
    assert deferred[0].record is None  # unreadable: said so, no crash
    assert deferred[0].problem
    assert (await backend.job([QUEUE], "due-0")).state is JobState.IN_PROGRESS

    await backend.finish(
        [Finished("due-0", result=b'{"s": true, "f": "record", "r": 1, "k": {}, "t": 1}', queue=QUEUE),
         Finished("due-1", result=FAILED_RESULT, queue=QUEUE)],
        keep_result_ms=60_000,
    )  # fmt: skip
    failed = await backend.job([QUEUE], "due-1")
    assert failed.state is JobState.FAILED
    assert failed.result is not None
    assert failed.result.error == {"type": "E", "message": "m"}
    assert (await backend.job([QUEUE], "due-0")).state is JobState.COMPLETE
    assert (await backend.job([QUEUE], "nope")).state is JobState.NOT_FOUND
    assert (await backend.job([QUEUE], "later-0")).state is JobState.DEFERRED
    with pytest.raises(ValueError, match="look one up by id"):
        await backend.jobs(QUEUE, JobState.COMPLETE)

    stats = await raw_redis(_settings(backend)).info("commandstats")
    assert not {"cmdstat_scan", "cmdstat_keys"} & set(stats)  # the read side never scans


async def test_worker_snapshots_are_found_without_scanning(backend: RedisBackend) -> None:
    await backend.publish_snapshot("w1", b'{"worker": "w1", "queue": "q"}', 60_000)
    await backend.publish_snapshot("w2", b'{"worker": "w2", "queue": "q"}', 60_000)
    assert sorted(await backend.worker_snapshots()) == [
        b'{"worker": "w1", "queue": "q"}',
        b'{"worker": "w2", "queue": "q"}',
    ]
    await backend.forget_worker("q", "w1")
    assert await backend.worker_snapshots() == [b'{"worker": "w2", "queue": "q"}']


async def test_concurrent_claims_on_one_backend_each_get_their_own_jobs(backend: RedisBackend) -> None:
    # A worker's claims keep a connection of their own; a second claim while one is in flight
    # (two engines on one backend, a script in a test) takes a pooled one instead of sharing it.
    now = int(time.time() * 1000)
    jobs = [NewJob(f"c-{i}", encode_job("record", {"key": i}, enqueue_ms=now), now - 10) for i in range(40)]
    await backend.enqueue_many(QUEUE, jobs, batch_size=100)
    claims = await asyncio.gather(
        *(backend.claim([ClaimQueue(QUEUE)], limit=10, lock_ms=60_000, token=f"t{i}") for i in range(4))
    )
    ids = [job.job_id for claim in claims for job in claim.jobs]
    assert sorted(ids) == sorted(job.job_id for job in jobs)  # every job claimed exactly once
    assert all(len(claim.jobs) == 10 for claim in claims)
