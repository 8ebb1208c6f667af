"""The worker's /healthz, /readyz and /metrics, read the way a monitoring system reads them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from core.errors import JobFailed
from devservices._process import pick_port
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import keys
from worker.engine import WorkerService
from worker.producer import Producer


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_known_jobs_and_health_follows_redis(database_url: str) -> None:
    port = pick_port()
    with RedisServer() as server:
        settings = make_settings(server.url, database_url=database_url, worker_http_port=port)
        worker = await start_worker(settings)
        base = f"http://127.0.0.1:{port}"
        try:
            async with Producer(settings, registry=TEST_REGISTRY) as producer, httpx.AsyncClient() as http:
                handles = [await producer.enqueue_job("record", {"key": f"k{i}"}) for i in range(5)]
                handles.append(await producer.enqueue_job("refuse", {"reason": "no"}))
                handles.append(await producer.enqueue_job("flaky", {"key": "f", "failures": 2}))
                handles.append(await producer.enqueue_job("record", {"key": "late"}, defer_by=30))
                for handle in handles[:-1]:
                    with contextlib.suppress(JobFailed):
                        await handle.result(timeout=10)

                assert (await http.get(f"{base}/healthz")).status_code == 200
                ready = await http.get(f"{base}/readyz")
                assert ready.status_code == 200
                assert ready.json() == {"status": "ready", "redis": "up"}
                samples = _samples((await http.get(f"{base}/metrics")).text)

                server.kill()
                await asyncio.sleep(0.3)
                not_ready = await http.get(f"{base}/readyz")
                assert not_ready.status_code == 503
                after = _samples((await http.get(f"{base}/metrics")).text)
        finally:
            await worker.stop()

    def finished(job: str, outcome: str) -> float:
        key = ("maxbooster_jobs_finished_total", (("job", job), ("mode", "queued"), ("outcome", outcome)))
        return samples.get(key, 0.0)

    assert finished("record", "complete") == 5
    assert finished("refuse", "failed") == 1
    assert finished("flaky", "retry") == 2
    assert finished("flaky", "complete") == 1
    assert samples[("maxbooster_job_retries_total", (("job", "flaky"), ("mode", "queued")))] == 2
    assert samples[("maxbooster_job_duration_seconds_count", (("job", "record"), ("mode", "queued")))] == 5
    assert samples[("maxbooster_queue_depth", (("queue", "default"),))] == 1  # the deferred job
    assert samples[("maxbooster_queue_depth", (("queue", "critical"),))] == 0
    assert samples[("maxbooster_redis_breaker_open", ())] == 0
    assert after[("maxbooster_redis_breaker_open", ())] == 1


async def test_producer_counts_inline_fallbacks(database_url: str) -> None:
    settings = make_settings("redis://127.0.0.1:1/0", database_url=database_url)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        for i in range(3):
            await producer.enqueue_job("record", {"key": f"i{i}"})
        samples = _samples(producer.metrics.render().decode())
    assert samples[("maxbooster_inline_fallbacks_total", (("job", "record"),))] == 3
    labels = (("job", "record"), ("mode", "inline"), ("outcome", "complete"))
    assert samples[("maxbooster_jobs_finished_total", labels)] == 3


async def test_jobs_the_worker_cannot_run_are_counted_like_any_failed_attempt(
    settings: Settings, log_output: io.StringIO
) -> None:
    now_ms = int(time.time() * 1000)
    forged = {
        "undecodable": b"\x80\x04 not json",
        "unknown-job": b'{"f": "no_such_job", "a": [], "k": {}, "et": 1}',
        "used-up": b'{"f": "record", "a": [], "k": {"key": "x"}, "et": 1, "t": 5}',
    }
    redis = raw_redis(settings)
    for job_id, record in forged.items():
        await redis.set(keys.job_key(job_id), record)
        await redis.zadd(settings.queue_name, {job_id: now_ms})
    service = WorkerService(settings, burst=True, registry=TEST_REGISTRY, handle_signals=False)
    assert await service.run() == 0

    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    finished = {line["job_id"]: line for line in lines if line["event"] == "job finished"}
    assert set(finished) == set(forged)  # one line each
    assert all(line["outcome"] == "failed" and "duration_ms" in line for line in finished.values())
    assert finished["unknown-job"]["error"] == "function 'no_such_job' not found"
    assert finished["used-up"]["error"] == "max 3 tries exceeded"
    samples = _samples(service.metrics.render().decode())
    for job in ("<unknown>", "no_such_job", "record"):
        labels = (("job", job), ("mode", "queued"), ("outcome", "failed"))
        assert samples[("maxbooster_jobs_finished_total", labels)] == 1
    recent = orjson.loads(service.metrics.recent.snapshot("w", settings.queue_name))
    counted: dict[str, int] = {}
    for minute in recent["minutes"].values():
        for job, outcomes in minute.items():
            counted[job] = counted.get(job, 0) + outcomes.get("failed", 0)
    assert counted == {"<unknown>": 1, "no_such_job": 1, "record": 1}  # what `stats` shows
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        letters = await producer.ledger.dead_letters(job_ids=list(forged))
    assert {letter.job_id for letter in letters} == set(forged)  # and each is a dead letter


async def test_follow_up_jobs_run_inline_in_a_worker_show_in_its_metrics(own_redis: RedisServer) -> None:
    settings = make_settings(own_redis.url)
    service = WorkerService(settings, registry=TEST_REGISTRY, handle_signals=False)
    task = asyncio.create_task(service.run())
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            handle = await producer.enqueue_job("follow_up_later", {"key": "during-outage", "seconds": 0.5})
            await eventually(lambda: bool(service.worker.tasks), what="the job started")
            own_redis.kill()  # the follow-up is enqueued while Redis is away: it runs inline, here
            await eventually(lambda: ("during-outage", "inline", 1) in RUNS, what="the follow-up ran inline")
            own_redis.restart()
            assert await handle.result(timeout=20) == "inline"
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 20)
    samples = _samples(service.metrics.render().decode())
    assert samples[("maxbooster_inline_fallbacks_total", (("job", "record"),))] == 1
    labels = (("job", "record"), ("mode", "inline"), ("outcome", "complete"))
    assert samples[("maxbooster_jobs_finished_total", labels)] == 1
