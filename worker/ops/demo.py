"""`python -m worker.demo`: the runner doing its job, for a newcomer (`make run` starts with it).

It starts its own throwaway redis-server and a worker process, then: jobs go through Redis to
the worker; Redis is stopped and the same jobs run inline in this process; Redis comes back
and queueing resumes without restarting anything. It only ever stops the Redis it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import asyncpg

from devservices.redis import RedisServer
from settings import Settings, load_settings
from worker.ledger.migrate import apply_migrations
from worker.producer import Producer
from worker.telemetry import configure_logging

__all__ = ["main"]


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


async def _pump(stream: asyncio.StreamReader) -> None:
    async for line in stream:
        print(f"    [worker] {line.decode().rstrip()}", flush=True)


async def _enqueue_samples(producer: Producer, label: str) -> None:
    for n in range(1, 4):
        handle = await producer.enqueue_job("ping", {"message": f"{label} #{n}"})
        result = await handle.result(timeout=10)
        mode, ran, message = handle.mode, result["mode"], result["message"]
        print(f"    job {handle.job_id[:8]}  mode={mode:<6}  ran {ran}: {message}", flush=True)


async def _send_welcome(producer: Producer, label: str) -> None:
    message = {
        "to": [{"email": "newcomer@example.com", "name": "Zoë Newcomer"}],
        "template": "welcome",
        "context": {"name": "Zoë", "dashboard_url": "https://app.maxbooster.example/dashboard"},
    }
    handle = await producer.enqueue_job("send_email", {"message": message})
    result = await handle.result(timeout=30)
    outcome = f"{result['status']} through the {result['transport']} transport"
    print(f"    send_email {handle.job_id[:8]}  mode={handle.mode:<6}  {label}: {outcome}", flush=True)


async def _migrate(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=10)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


async def _wait_until_queueing(producer: Producer, timeout: float = 10.0) -> float:
    started = time.monotonic()
    await asyncio.wait_for(producer.backend.wait_until_up(), timeout)
    return time.monotonic() - started


async def _demo(settings: Settings) -> None:
    with RedisServer() as redis_server:
        demo_settings = settings.model_copy(
            update={"redis_url": type(settings.redis_url)(redis_server.url), "queue_name": "demo:queue"}
        )
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "QUEUE_NAME": "demo:queue",
            "LOG_FORMAT": "console",
            "WORKER_HTTP_PORT": "0",
        }
        await _migrate(settings)
        _say(f"Started a throwaway Redis at {redis_server.url} and a worker process")
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert worker.stdout is not None
        pump = asyncio.create_task(_pump(worker.stdout))
        try:
            async with Producer(demo_settings) as producer:
                await asyncio.sleep(1.0)  # let the worker log its start
                _say("1. Redis is up: jobs are queued and the worker runs them")
                await _enqueue_samples(producer, "through Redis")
                await _send_welcome(producer, "delivered by the worker")

                _say("2. Redis stopped: the same jobs run inline, here, at once")
                redis_server.stop()
                await _enqueue_samples(producer, "while Redis is down")
                await _send_welcome(producer, "delivered inline")

                _say("3. Redis is back: queueing resumes by itself")
                redis_server.restart()
                waited = await _wait_until_queueing(producer)
                print(f"    producer saw Redis again after {waited * 1000:.0f} ms")
                await asyncio.sleep(1.5)  # the worker reconnects with backoff
                await _enqueue_samples(producer, "through Redis again")
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 30)
            await pump


def main() -> int:
    settings = load_settings(log_format="console")
    configure_logging(settings)
    asyncio.run(_demo(settings))
    mail_dir = os.path.abspath(settings.email_file_dir)
    _say(f"Mail went to {mail_dir} as .eml files (no SendGrid or SMTP configured); open one to read it")
    _say("Demo done. Next: the worker on your configured Redis (Ctrl-C stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
