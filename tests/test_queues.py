"""Named queues and flow control against real Redis and real worker processes: priority under a
backlog, weighted queues, caps per worker and across workers, rate limits shared by processes
(and per process inline), cancel, pause and resume, and progress seen from another process."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from core.errors import JobFailed
from core.flow import queue_key
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis, start_worker
from tests.http_fixtures import TOKEN, TOKEN_RECORD_ONLY, serving
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import CancelOutcome, keys
from worker.producer import JobHandle, Producer

ROOT = Path(__file__).resolve().parents[1]


def _max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def _env(settings: Settings) -> dict[str, str]:
    """The environment of a process (worker or CLI) on the test's Redis, queue and database."""
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "QUEUE_NAME": settings.queue_name,
        "LOG_LEVEL": "WARNING",
    }


@asynccontextmanager
async def _worker_processes(settings: Settings, count: int, **env: str) -> AsyncIterator[None]:
    """`count` worker processes on the test registry, stopped (SIGTERM) on exit."""
    environment = {**_env(settings), "WORKER_HTTP_PORT": "0", **env}
    procs = []
    for _ in range(count):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.run_worker", cwd=ROOT, env=environment, stdout=subprocess.DEVNULL
        )
        procs.append(proc)
    try:
        # Both up before the test's jobs: a process that starts late (a busy machine, a fresh
        # checkout compiling its bytecode) would find every job already taken by the other.
        async def all_up() -> bool:
            return await _live_workers(settings) == count

        await eventually(all_up, timeout=30, what=f"{count} workers up")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert await asyncio.wait_for(proc.wait(), 15) == 0


async def _live_workers(settings: Settings) -> int:
    """Worker processes on this test's queues that published a snapshot (a second after start)."""
    redis = raw_redis(settings)
    ids = await redis.zrange(keys.WORKERS_KEY, 0, -1)
    snapshots = await redis.mget([keys.worker_stats_key(i.decode()) for i in ids]) if ids else []
    return sum(1 for raw in snapshots if raw is not None and settings.queue_name.encode() in raw)


async def _results(handles: Sequence[JobHandle[Any]], timeout: float = 20) -> list[dict[str, Any]]:
    return [await h.result(timeout=timeout) for h in handles]


# -- priority ------------------------------------------------------------------------------------


async def test_critical_jobs_run_before_a_backlog_of_the_other_queues(settings: Settings) -> None:
    one_at_a_time = settings.model_copy(update={"worker_max_jobs": 1})
    async with Producer(one_at_a_time, registry=TEST_REGISTRY) as producer:
        handles = []
        for queue in ("bulk", "default", "critical"):  # the most urgent last in, first out
            handles += [
                await producer.enqueue_job("record", {"key": f"{queue}-{i}"}, queue=queue) for i in range(4)
            ]
        assert {h.queue for h in handles} == {queue_key(settings, q) for q in ("bulk", "default", "critical")}
        worker = await start_worker(one_at_a_time)
        try:
            await _results(handles)
        finally:
            await worker.stop()
    assert [key.split("-")[0] for key, _, _ in RUNS] == ["critical"] * 4 + ["default"] * 4 + ["bulk"] * 4


async def test_weighted_queues_all_progress_under_load(settings: Settings) -> None:
    weighted = settings.model_copy(update={"worker_max_jobs": 1, "worker_queues": "default:1,bulk:1"})
    async with Producer(weighted, registry=TEST_REGISTRY) as producer:
        handles = []
        for queue in ("default", "bulk"):
            handles += [
                await producer.enqueue_job("record", {"key": f"{queue}-{i}"}, queue=queue) for i in range(30)
            ]
        worker = await start_worker(weighted)
        try:
            await _results(handles)
        finally:
            await worker.stop()
    first = [key.split("-")[0] for key, _, _ in RUNS[:20]]
    # Strict order would run 20 "default" first; by weight both queues move (a 1 in 2**17 chance not).
    assert first.count("bulk") >= 3, first
    assert first.count("default") >= 3, first


async def test_a_queue_cap_leaves_the_other_slots_to_other_queues(settings: Settings) -> None:
    capped = settings.model_copy(update={"worker_max_jobs": 20, "worker_queue_concurrency": "ai=2"})
    worker = await start_worker(capped)
    try:
        async with Producer(capped, registry=TEST_REGISTRY) as producer:
            slow = [
                await producer.enqueue_job("stamp_ai", {"key": f"ai-{i}", "seconds": 0.3}) for i in range(8)
            ]
            await asyncio.sleep(0.1)
            started = time.time()
            urgent = await producer.enqueue_job("record", {"key": "reset"}, queue="critical")
            await urgent.result(timeout=5)
            urgent_done = time.time() - started
            ai = await _results(slow)
    finally:
        await worker.stop()
    assert _max_overlap([(r["start"], r["end"]) for r in ai]) == 2  # never more than the cap
    assert urgent_done < 0.25  # not behind the eight slow jobs (1.2 s at two at a time)


async def test_a_global_cap_holds_across_worker_processes(settings: Settings) -> None:
    async with (
        _worker_processes(
            settings,
            2,
            QUEUE_GLOBAL_CONCURRENCY="ai=3",
            WORKER_QUEUE_CONCURRENCY="ai=10",
            WORKER_MAX_JOBS="10",
        ),
        Producer(settings, registry=TEST_REGISTRY) as producer,
    ):
        handles = [
            await producer.enqueue_job("stamp_ai", {"key": f"g{i}", "seconds": 0.25}) for i in range(12)
        ]
        results = await _results(handles, timeout=30)
    assert _max_overlap([(r["start"], r["end"]) for r in results]) == 3
    assert len({r["pid"] for r in results}) == 2  # both processes took part


# -- rate limits ---------------------------------------------------------------------------------


async def test_a_rate_limit_is_shared_by_worker_processes(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limits": "test_rate=10/s"})
    # One job at a time per process, each busy longer than the 100 ms between turns: the process
    # that took one turn cannot take the next, so both must serve the limit (otherwise the faster
    # one to wake can win every turn, and the test would not show the limit is shared).
    workers = {"RATE_LIMITS": "test_rate=10/s", "WORKER_MAX_JOBS": "1", "WORKER_CLAIM_AHEAD": "0"}
    async with (
        _worker_processes(limited, 2, **workers),
        Producer(limited, registry=TEST_REGISTRY) as producer,
    ):
        handles = [
            await producer.enqueue_job("stamp_limited", {"key": f"r{i}", "seconds": 0.15}) for i in range(25)
        ]
        results = await _results(handles, timeout=30)
    starts = sorted(r["start"] for r in results)
    # Turns 100 ms apart, each job started at or after its turn: a one-second window holds ten
    # turns, and one more start only if a job was late for its turn by up to one interval.
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 11
    assert starts[-1] - starts[0] >= 2.2  # 25 starts at 10/s take 2.4 s
    assert len({r["pid"] for r in results}) == 2
    assert {r["job_try"] for r in results} == {1}  # waiting for a turn costs no try


async def test_a_rate_limit_applies_per_process_to_inline_runs(settings: Settings) -> None:
    inline = settings.model_copy(update={"redis_url": SecretStr(""), "rate_limits": "test_rate=5/s"})
    async with Producer(inline, registry=TEST_REGISTRY) as producer:
        handles = [
            await producer.enqueue_job("stamp_limited", {"key": f"i{i}"}, background=True) for i in range(6)
        ]
        assert {h.mode for h in handles} == {"inline"}
        results = await _results(handles)
    starts = sorted(r["start"] for r in results)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.18  # one every 200 ms


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_removes_queued_and_deferred_jobs(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        queued = await producer.enqueue_job("record", {"key": "queued"}, queue="bulk")
        deferred = await producer.enqueue_job("record", {"key": "deferred"}, defer_by=60)
        kept = await producer.enqueue_job("record", {"key": "kept"})
        assert await producer.cancel(queued.job_id) is CancelOutcome.CANCELLED
        assert await producer.cancel(deferred.job_id) is CancelOutcome.CANCELLED
        assert await producer.cancel(deferred.job_id) is CancelOutcome.FINISHED  # already over
        assert await producer.cancel("no-such-job") is CancelOutcome.NOT_FOUND
        worker = await start_worker(settings)
        try:
            await kept.result(timeout=5)
            with pytest.raises(JobFailed) as failure:
                await queued.result(timeout=5)
            statuses = [await producer.status(h.job_id) for h in (queued, deferred)]
        finally:
            await worker.stop()
    assert failure.value.error_type == "JobCancelled"
    assert [s["status"] for s in statuses] == ["cancelled", "cancelled"]
    assert statuses[0]["job"] == "record"
    assert [key for key, _, _ in RUNS] == ["kept"]  # neither cancelled job ever ran


async def test_cancel_takes_a_job_out_of_the_spool(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")})
    async with Producer(down, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record_spooled", {"key": "spooled"})
        assert handle.mode == "spooled"
        assert await producer.cancel(handle.job_id) is CancelOutcome.CANCELLED
        status = await producer.status(handle.job_id)
        assert await producer.ledger.spooled(handle.job_id) is None
        assert await producer.ledger.dead_letter_of(handle.job_id) is None  # cancelled is not failed
    assert status["status"] == "cancelled"


@pytest.mark.parametrize("mode", ["queued", "inline"])
async def test_a_running_job_is_asked_to_stop_and_ends_cancelled(settings: Settings, mode: str) -> None:
    if mode == "inline":
        settings = settings.model_copy(update={"redis_url": SecretStr("")})
    worker = await start_worker(settings) if mode == "queued" else None
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            handle = await producer.enqueue_job("patient", {"steps": 200}, background=True)
            await eventually(
                lambda: _status_is(producer, handle.job_id, "in_progress"), what="the job started"
            )
            asked = time.monotonic()
            assert await producer.cancel(handle.job_id) is CancelOutcome.REQUESTED
            with pytest.raises(JobFailed) as failure:
                await handle.result(timeout=5)
            stopped_after = time.monotonic() - asked
            status = await producer.status(handle.job_id)
            letter = await producer.ledger.dead_letter_of(handle.job_id)
    finally:
        if worker is not None:
            await worker.stop()
    assert failure.value.error_type == "JobCancelled"
    assert status["status"] == "cancelled"
    assert letter is None
    assert stopped_after < 2.5  # 200 steps would take 10 s; the worker passes requests on each second


async def _status_is(producer: Producer, job_id: str, wanted: str) -> bool:
    status: str = (await producer.status(job_id))["status"]
    return status == wanted


# -- pause and resume ----------------------------------------------------------------------------


async def test_a_paused_queue_keeps_its_jobs_until_resumed(settings: Settings) -> None:
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            assert await producer.pause_queue("bulk") is True
            assert await producer.pause_queue("bulk") is False  # already paused
            waiting = await producer.enqueue_job("record", {"key": "waits"}, queue="bulk")
            other = await producer.enqueue_job("record", {"key": "flows"})
            await other.result(timeout=5)  # the other queues carry on
            await asyncio.sleep(0.5)
            assert (await producer.status(waiting.job_id))["status"] == "queued"
            assert await producer.queues.paused() == ["bulk"]
            resumed = time.monotonic()
            assert await producer.resume_queue("bulk") is True
            await waiting.result(timeout=5)
            resumed_in = time.monotonic() - resumed
    finally:
        await worker.stop()
    assert resumed_in < 0.5  # resuming wakes the worker; it does not wait for its next block
    assert [key for key, _, _ in RUNS] == ["flows", "waits"]


async def test_queues_pause_and_cancel_from_the_command_line(settings: Settings) -> None:
    env = _env(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record", {"key": "x"}, defer_by=60)
    assert orjson.loads(cli("pause", "ai").stdout) == {"queue": "ai", "paused": True, "was_paused": False}
    table = cli("queues").stdout
    assert [line.split()[-1] for line in table.splitlines() if line.startswith("ai ")] == ["4"]  # its cap
    assert "paused" in next(line for line in table.splitlines() if line.startswith("ai "))
    assert "active" in next(line for line in table.splitlines() if line.startswith("default "))
    assert orjson.loads(cli("resume", "ai").stdout)["was_paused"] is True
    assert orjson.loads(cli("cancel", handle.job_id).stdout) == {
        "job_id": handle.job_id,
        "outcome": "cancelled",
    }
    assert orjson.loads(cli("status", handle.job_id).stdout)["status"] == "cancelled"
    bad = cli("pause", "Not A Queue")
    assert bad.returncode == 2
    assert "is not a queue name" in bad.stderr


# -- progress ------------------------------------------------------------------------------------


async def test_progress_is_visible_from_another_process(own_redis: RedisServer, database_url: str) -> None:
    settings = make_settings(own_redis.url, database_url=database_url)  # a Redis to count commands on
    env = _env(settings)
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            sets_before = await _set_calls(settings)
            handle = await producer.enqueue_job("patient", {"steps": 40, "step_s": 0.05})
            await eventually(lambda: _has_progress(handle), what="a progress report")
            seen = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "worker", "status", handle.job_id],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            await handle.result(timeout=10)
            sets = await _set_calls(settings) - sets_before
    finally:
        await worker.stop()
    report = orjson.loads(seen.stdout)
    assert report["status"] == "in_progress"
    assert 0 < report["progress"]["fraction"] <= 1
    assert report["progress"]["message"].endswith("of 40 steps")
    # 40 reports in 2 s cost a write every half second (plus the lock and the result), not 40.
    assert sets <= 10, sets


async def _set_calls(settings: Settings) -> int:
    info = await raw_redis(settings).info("commandstats")
    return int(info.get("cmdstat_set", {}).get("calls", 0))


async def _has_progress(handle: JobHandle[Any]) -> bool:
    progress = await handle.progress()
    return progress is not None and progress["fraction"] > 0.1


async def test_progress_of_an_inline_job_is_on_its_handle(settings: Settings) -> None:
    inline = settings.model_copy(update={"redis_url": SecretStr("")})
    async with Producer(inline, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("patient", {"steps": 30, "step_s": 0.02}, background=True)
        await eventually(lambda: _has_progress(handle), what="a progress report")
        status = await producer.status(handle.job_id)
        await handle.result(timeout=5)
    assert status["status"] == "in_progress"
    assert status["mode"] == "inline"
    assert status["progress"]["message"].endswith("of 30 steps")


# -- the HTTP API --------------------------------------------------------------------------------


async def test_the_http_api_cancels_jobs_and_pauses_queues(settings: Settings) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        auth = {"authorization": f"Bearer {TOKEN}"}
        enqueued = await http.post(
            "/v1/jobs/record", json={"args": {"key": "k"}, "defer_by": 60, "queue": "bulk"}, headers=auth
        )
        job_id = enqueued.json()["job_id"]
        cancelled = await http.delete(f"/v1/jobs/{job_id}", headers=auth)
        status = await http.get(f"/v1/jobs/{job_id}", headers=auth)
        missing = await http.delete("/v1/jobs/nothing-here", headers=auth)
        paused = await http.post("/v1/queues/bulk/pause", headers=auth)
        scoped = await http.post(
            "/v1/queues/bulk/resume", headers={"authorization": f"Bearer {TOKEN_RECORD_ONLY}"}
        )
        resumed = await http.post("/v1/queues/bulk/resume", headers=auth)
        bad_queue = await http.post(
            "/v1/jobs/record", json={"args": {"key": "k"}, "queue": "No!"}, headers=auth
        )
    assert enqueued.status_code == 202
    assert (cancelled.status_code, cancelled.json()["outcome"]) == (200, "cancelled")
    assert (status.json()["status"], status.json()["queue"]) == ("cancelled", "bulk")
    assert missing.status_code == 404
    assert paused.json() == {"queue": "bulk", "paused": True, "was_paused": False}
    assert scoped.status_code == 403
    assert resumed.json()["was_paused"] is True
    assert bad_queue.status_code == 422
    assert bad_queue.json()["error"]["fields"][0]["field"] == "queue"
