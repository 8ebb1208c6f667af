"""What anyone who can write to the runner's Redis could do before, each now a test: poison queue
entries, a wrong-typed wake key, undecodable records, forged notes, snapshots and results,
unbounded ids and records, bad deferrals. The worker keeps running and real jobs run once."""

from __future__ import annotations

import asyncio
import io
import math
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from core import JobContext, Registry, Schedule, define
from core.errors import JobValidationError
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import keys
from worker.engine import WorkerService
from worker.producer import Producer

ROOT = Path(__file__).resolve().parents[1]


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def _lines(log_output: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]


async def _dead_letters(producer: Producer, job_ids: list[str]) -> dict[str, str]:
    return {d.job_id: d.error["type"] for d in await producer.ledger.dead_letters(job_ids=job_ids)}


async def test_poison_queue_entries_are_quarantined_and_the_rest_of_the_batch_runs(
    settings: Settings, log_output: io.StringIO
) -> None:
    redis = raw_redis(settings)
    now_ms = int(time.time() * 1000)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handles = [await producer.enqueue_job("record", {"key": f"real-{i}"}) for i in range(5)]
        # What crashed the claim on every restart: an infinite score, bytes that are not UTF-8.
        await redis.zadd(settings.queue_name, {b"inf-score": math.inf, b"\xff\xfe-not-utf8": now_ms})
        await redis.zadd(settings.queue_name, {b"x" * 10_000: now_ms})  # an id no producer writes
        await redis.set(
            keys.job_key("inf-score"), b'{"f": "record", "a": [], "k": {"key": "never"}, "et": 1}'
        )
        worker = await start_worker(settings)
        try:
            results = [await h.result(timeout=10) for h in handles]
            await eventually(lambda: _quarantined(producer, 3), what="three dead letters")
            assert not worker.task.done()  # the worker is still running
        finally:
            assert await worker.stop() == 0
    assert [r["key"] for r in results] == [f"real-{i}" for i in range(5)]
    assert sorted(key for key, _, _ in RUNS) == sorted(f"real-{i}" for i in range(5))  # each once
    assert await redis.zcard(settings.queue_name) == 0  # nothing left to crash a later claim
    assert await redis.exists(keys.job_key("inf-score")) == 0
    lines = [line for line in _lines(log_output) if line.get("error_type") == "PoisonEntry"]
    assert len(lines) == 3  # one line each, no traceback
    assert not any("exception" in line for line in _lines(log_output))


async def _quarantined(producer: Producer, count: int) -> bool:
    letters = await producer.ledger.dead_letters(limit=50)
    return sum(1 for d in letters if d.error["type"] == "PoisonEntry") >= count


async def test_a_wrong_typed_wake_key_neither_stops_workers_nor_fails_enqueues(
    settings: Settings, log_output: io.StringIO
) -> None:
    redis = raw_redis(settings)
    wake = keys.wake_key(settings.queue_name)
    idle = settings.model_copy(update={"worker_idle_block": 0.3})
    worker = await start_worker(idle)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            first = await producer.enqueue_job("record", {"key": "before"})
            await first.result(timeout=5)
            await redis.set(wake, b"x")  # kills idle workers, and made every enqueue raise
            await asyncio.sleep(0.5)  # the worker's next block meets it
            handle = await producer.enqueue_job("record", {"key": "after"})
            assert handle.mode == "queued"  # queued, and said so: no raw Redis error
            assert (await handle.result(timeout=5))["key"] == "after"
            await redis.set(wake, b"x")
            await eventually(lambda: _is_zset(settings, wake), what="the worker repaired the wake key")
            assert not worker.task.done()
    finally:
        assert await worker.stop() == 0
    assert [key for key, _, _ in RUNS] == ["before", "after"]
    assert any(line["event"] == "a queue's wake key was not ours; repaired it" for line in _lines(log_output))


async def _is_zset(settings: Settings, key: str) -> bool:
    # A repaired wake key is a sorted set, or gone once a blocked worker popped its member.
    return await raw_redis(settings).type(key) in (b"zset", b"none")


async def test_records_the_worker_cannot_read_are_dead_lettered_on_first_sight(
    settings: Settings, log_output: io.StringIO
) -> None:
    redis = raw_redis(settings)
    deep = '{"x": ' * 300 + "1" + "}" * 300
    records = {
        "try-text": b'{"f": "record", "a": [], "k": {"key": "a"}, "et": 1, "t": "1"}',
        "try-list": b'{"f": "record", "a": [], "k": {"key": "b"}, "et": 1, "t": [1]}',
        "too-deep": f'{{"f": "takes_any", "a": [], "k": {{"data": {deep}}}, "et": 1}}'.encode(),
        "too-big": b'{"f": "record", "a": [], "k": {"key": "' + b"x" * 2_000_000 + b'"}, "et": 1}',
    }
    now_ms = int(time.time() * 1000)
    for job_id, record in records.items():
        await redis.set(keys.job_key(job_id), record)
        await redis.zadd(settings.queue_name, {job_id: now_ms})
    service = WorkerService(settings, burst=True, registry=TEST_REGISTRY, handle_signals=False)
    assert await asyncio.wait_for(service.run(), 20) == 0
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        dead = await _dead_letters(producer, list(records))
        statuses = {job_id: (await producer.status(job_id))["status"] for job_id in records}
    assert dead == dict.fromkeys(records, "DeserializationError")
    assert set(statuses.values()) == {"dead"}
    finished = [line for line in _lines(log_output) if line["event"] == "job finished"]
    assert sorted(str(line["job_id"]) for line in finished) == sorted(
        records
    )  # once each, not per lock expiry
    assert RUNS == []


def test_the_reader_refuses_what_the_writer_cannot_write() -> None:
    from core.codec import MAX_DEPTH, CodecError, decode_job, encode_job

    nested: object = 1
    for _ in range(MAX_DEPTH):
        nested = [nested]
    with pytest.raises(TypeError):  # the writer's limit (orjson)
        encode_job("takes_any", {"data": nested}, enqueue_ms=1)
    raw = b'{"f": "takes_any", "a": [], "k": {"data": ' + b"[" * 300 + b"1" + b"]" * 300 + b'}, "et": 1}'
    with pytest.raises(CodecError, match="nested deeper than 254 levels"):
        decode_job(raw)


async def test_a_forged_schedule_note_does_not_stop_the_schedule(
    redis_server: RedisServer, log_output: io.StringIO
) -> None:
    ran: list[str] = []

    async def tick(ctx: JobContext) -> None:
        ran.append(ctx.job_id)

    every_second = Schedule("tick", second=frozenset(range(60)), catch_up=timedelta(seconds=30))
    registry = Registry([define(tick)], schedules=[every_second])
    settings = make_settings(redis_server.url)
    await raw_redis(settings).set(keys.schedule_key(settings.queue_name, "tick"), b"not-a-time")
    service = WorkerService(settings, registry=registry, handle_signals=False)
    task = asyncio.create_task(service.run())
    try:
        await eventually(lambda: len(ran) >= 2, what="the schedule keeps running")
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert any(line["event"] == "ignoring a schedule note that is not a time" for line in _lines(log_output))


async def test_a_wake_set_grown_with_members_does_not_make_an_idle_worker_spin(settings: Settings) -> None:
    redis = raw_redis(settings)
    wake = keys.wake_key(settings.queue_name)
    await redis.zadd(wake, {f"m{i}": i for i in range(300_000)})
    worker = await start_worker(settings)
    try:
        await eventually(lambda: _card_at_most(settings, wake, 1), what="the wake set trimmed")
        before = int((await redis.info("stats"))["total_commands_processed"])
        await asyncio.sleep(1.0)
        after = int((await redis.info("stats"))["total_commands_processed"])
    finally:
        await worker.stop()
    assert after - before < 50  # idle again: about one block a second here, not thousands of claims


async def _card_at_most(settings: Settings, key: str, most: int) -> bool:
    return int(await raw_redis(settings).zcard(key)) <= most


async def test_forged_snapshots_and_results_do_not_crash_stats_or_status(settings: Settings) -> None:
    redis = raw_redis(settings)
    queue = settings.queue_name
    await redis.set(keys.worker_stats_key("forged"), orjson.dumps({"queue": queue, "minutes": {"x": 1}}))
    await redis.zadd(keys.WORKERS_KEY, {"forged": int(time.time() * 1000)})
    escape = {"worker": "w\x1b[31mred", "host": "h", "queue": queue, "pid": 1, "running": 0,
              "minutes": {str(int(time.time() // 60)): {"job\x1b[2J": {"complete": 1}}}}  # fmt: skip
    await redis.set(keys.worker_stats_key("escape"), orjson.dumps(escape))
    await redis.zadd(keys.WORKERS_KEY, {"escape": int(time.time() * 1000)})
    await redis.set(keys.result_key("forged-result"), b'{"s": "yes", "r": [1, 2]}')
    await redis.set(keys.result_key("odd-result"), b'{"s": true, "f": "record", "r": "\\u001b[2J", "t": "x"}')
    env = {"REDIS_URL": settings.redis_url.get_secret_value(), "QUEUE_NAME": queue,
           "DATABASE_URL": settings.database_url.get_secret_value(), "PATH": "/usr/bin:/bin"}  # fmt: skip
    stats = await _cli(env, "stats")
    assert stats.returncode == 0, stats.stderr
    assert "malformed: 1 worker snapshot" in stats.stdout
    assert "\x1b" not in stats.stdout  # escaped, never sent to the terminal
    assert "job\\x1b[2J" in stats.stdout
    for job_id, expected in (("forged-result", "failed"), ("odd-result", "complete")):
        status = await _cli(env, "status", job_id)
        assert status.returncode in (0, 1), status.stderr
        assert orjson.loads(status.stdout)["status"] == expected
        assert "\x1b" not in status.stdout


async def test_job_ids_deferrals_and_records_are_bounded(settings: Settings) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        for bad_id in ("x" * 10_000_000, "has space", "", "é"):
            with pytest.raises(JobValidationError, match=r"job_id: .* is not a valid job id"):
                await producer.enqueue_job("record", {"key": "k"}, job_id=bad_id)
        for bad in (math.nan, math.inf, -1.0, 10.0**10, True):
            with pytest.raises(JobValidationError, match="defer_by: "):
                await producer.enqueue_job("record", {"key": "k"}, defer_by=bad)
        with pytest.raises(JobValidationError, match="job_id"):
            await producer.enqueue_many("record", [{"key": "k"}], job_ids=["bad id"])
    assert RUNS == []


async def test_signing_is_off_without_keys_and_doctor_says_degraded(settings: Settings) -> None:
    from worker.ops.doctor import check_signing

    assert (await check_signing(settings)).state == "degraded"
    keyed = settings.model_copy(update={"job_signing_keys": SecretStr("k" * 32)})
    assert (await check_signing(keyed)).state == "ok"
