"""Redis killed, restarted and blackholed under a running producer and worker.

Each test owns its redis-server (on a free port) or a loopback proxy in front of one; the
machine's shared Redis is never touched.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter

import orjson

from devservices.proxy import TcpProxy
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY, record
from worker.backend import keys
from worker.producer import Producer


def _events(log_output: io.StringIO, event: str, role: str) -> int:
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    return sum(1 for e in lines if e.get("event") == event and e.get("role") == role)


async def test_redis_killed_during_a_stream_of_enqueues_loses_nothing(
    own_redis: RedisServer, database_url: str
) -> None:
    # Every write fsynced, so the outage is the only fault: jobs queued before the kill survive it.
    settings = make_settings(own_redis.url, database_url=database_url)
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            handles = []
            for i in range(300):
                if i == 100:
                    own_redis.kill()
                if i == 200:
                    own_redis.restart()
                    await eventually(lambda: producer.backend.usable)
                handles.append(await producer.enqueue(record, key=f"k{i}"))
                await asyncio.sleep(0.001)
            results = [await h.result(timeout=20) for h in handles]
    finally:
        await worker.stop()

    modes = Counter(h.mode for h in handles)
    assert modes["inline"] >= 90, modes  # the jobs enqueued while Redis was dead
    assert modes["queued"] >= 200, modes
    assert [r["key"] for r in results] == [f"k{i}" for i in range(300)]
    ran = Counter(key for key, _, _ in RUNS)
    assert set(ran) == {f"k{i}" for i in range(300)}  # every job ran: none lost
    assert max(ran.values()) == 1  # and none twice


async def test_redis_restarted_queueing_resumes_without_restarting_anything(
    database_url: str, log_output: io.StringIO
) -> None:
    with RedisServer() as server:
        settings = make_settings(server.url, database_url=database_url)
        worker = await start_worker(settings)
        try:
            async with Producer(settings, registry=TEST_REGISTRY) as producer:
                first = await producer.enqueue(record, key="before")
                assert (await first.result(timeout=5))["mode"] == "queued"

                server.stop()
                during = await producer.enqueue(record, key="during")
                assert during.mode == "inline"
                await asyncio.sleep(0.3)  # the worker's blocked wake-up sees the connection drop

                server.restart()
                await eventually(lambda: producer.backend.usable and worker.service.backend.usable)
                after = await producer.enqueue(record, key="after")
                assert after.mode == "queued"
                assert (await after.result(timeout=5))["mode"] == "queued"
        finally:
            await worker.stop()

    assert _events(log_output, "redis unavailable", "worker") == 1
    assert _events(log_output, "redis connected", "worker") == 2  # at start, then after the outage
    assert _events(log_output, "redis unavailable", "producer") == 1


async def test_blackholed_redis_is_detected_by_the_socket_timeout(
    redis_server: RedisServer, settings: Settings
) -> None:
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    await proxy.start()
    proxied = settings.model_copy(
        update={"redis_url": type(settings.redis_url)(f"redis://127.0.0.1:{proxy.port}/0")}
    )
    try:
        async with Producer(proxied, registry=TEST_REGISTRY) as producer:
            before = await producer.enqueue(record, key="before")
            assert before.mode == "queued"

            proxy.blackhole()
            started = time.perf_counter()
            during = await producer.enqueue_job("record", {"key": "during"}, job_id="blackholed-1")
            first_elapsed = time.perf_counter() - started
            assert during.mode == "inline"
            assert (await during.result(timeout=1))["mode"] == "inline"
            # Bounded by the 0.25 s socket timeout (plus scheduling slack on a busy machine).
            assert first_elapsed < 1.0

            started = time.perf_counter()
            again = await producer.enqueue(record, key="while-open")
            assert again.mode == "inline"
            assert time.perf_counter() - started < 0.1  # breaker open: no network wait

            proxy.restore()
            await eventually(lambda: producer.backend.usable)
            after = await producer.enqueue(record, key="after")
            assert after.mode == "queued"
            # The job whose reply was lost ran inline once and is not also waiting in the queue.
            assert await raw_redis(producer.settings).exists(keys.job_key("blackholed-1")) == 0
    finally:
        await proxy.stop()
    assert [key for key, mode, _ in RUNS] == ["during", "while-open"]


async def test_first_enqueue_against_refused_redis_falls_back_at_once(settings: Settings) -> None:
    refused = settings.model_copy(update={"redis_url": type(settings.redis_url)("redis://127.0.0.1:1/0")})
    async with Producer(refused, registry=TEST_REGISTRY) as producer:
        started = time.perf_counter()
        handle = await producer.enqueue(record, key="refused")
        assert time.perf_counter() - started < 0.25
        assert handle.mode == "inline"
        assert (await handle.result(timeout=1))["key"] == "refused"


async def test_a_result_already_in_redis_is_returned_while_the_breaker_is_open(
    settings: Settings, redis_server: RedisServer, worker: object
) -> None:
    async with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        # A producer whose probe would take a minute to notice Redis is back.
        url = type(settings.redis_url)(proxy.url_for(redis_server.url))
        proxied = settings.model_copy(update={"redis_url": url, "redis_probe_interval": 60.0})
        async with Producer(proxied, registry=TEST_REGISTRY) as producer:
            handle = await producer.enqueue(record, key="done-before-the-blip")
            await eventually(lambda: RUNS != [], what="the worker ran the job")
            proxy.cut()  # a blip: the producer's connection is reset, its breaker opens
            assert (await producer.enqueue(record, key="during")).mode == "inline"
            assert not producer.backend.usable
            result = await handle.result(timeout=3)
            assert result["key"] == "done-before-the-blip"
            assert not producer.backend.usable  # still open: the result was read past it
