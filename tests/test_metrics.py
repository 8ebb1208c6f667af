"""The worker's /healthz, /readyz and /metrics, read the way a monitoring system reads them."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.errors import JobFailed
from devservices._process import pick_port
from devservices.redis import RedisServer
from tests.conftest import make_settings, start_worker
from tests.sample_jobs import TEST_REGISTRY
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
    assert samples[("maxbooster_queue_depth", (("queue", settings.queue_name),))] == 1  # the deferred job
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
