"""Bounded work: inline jobs in a web process while Redis is down, and the health server under a
flood of idle connections."""

from __future__ import annotations

import asyncio
import os

import httpx
from pydantic import SecretStr

from core.errors import EnqueueError
from devservices._process import pick_port
from settings import Settings
from tests.conftest import start_worker
from tests.sample_jobs import TEST_REGISTRY
from worker.producer import Producer


async def test_inline_work_is_bounded_with_backpressure_and_a_clear_error(settings: Settings) -> None:
    down = settings.model_copy(
        update={"redis_url": SecretStr(""), "inline_max_concurrent": 4, "inline_wait_timeout": 0.3}
    )
    peak = 0
    async with Producer(down, registry=TEST_REGISTRY) as producer:

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, producer.metrics.recent.running)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        calls = [producer.enqueue_job("sleepy_long", {"seconds": 0.2}) for _ in range(40)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        watcher.cancel()
    ran = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, EnqueueError)]
    assert peak == 4  # never more than INLINE_MAX_CONCURRENT at once, in this web process
    assert len(ran) + len(refused) == 40  # every call ran or got an answer: none dropped
    assert ran
    assert refused
    assert "INLINE_MAX_CONCURRENT" in str(refused[0])


async def test_a_big_bulk_email_waits_in_the_spool_instead_of_running_in_a_request(
    settings: Settings,
) -> None:
    down = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")})
    message = {
        "subject": "News",
        "text": "Hello",
        "recipients": [{"email": f"fan{i}@example.com"} for i in range(200)],
    }
    async with Producer(down) as producer:
        big = await producer.enqueue_job("send_bulk_email", {"message": message})
        small = await producer.enqueue_job(
            "send_bulk_email", {"message": {**message, "recipients": message["recipients"][:3]}}
        )
    assert big.mode == "spooled"  # 200 recipients: over EMAIL_INLINE_MAX_RECIPIENTS
    assert small.mode == "inline"


def _open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


async def test_health_answers_through_a_flood_of_idle_connections(settings: Settings) -> None:
    port = pick_port()
    worker = await start_worker(settings.model_copy(update={"worker_http_port": port}))
    idle: list[asyncio.StreamWriter] = []
    try:
        async with httpx.AsyncClient() as http:
            await _until_up(http, port)
            before = _open_fds()
            for _ in range(1000):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    break
                idle.append(writer)
            await asyncio.sleep(0.2)
            response = await http.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            assert response.status_code == 200
            # Our 1,000 client sockets count in this process too; the server holds at most 64.
            assert _open_fds() - before <= 1000 + 64 + 8
    finally:
        for writer in idle:
            writer.close()
        await worker.stop()


async def _until_up(http: httpx.AsyncClient, port: int) -> None:
    for _ in range(100):
        try:
            await http.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except httpx.HTTPError:
            await asyncio.sleep(0.05)
