"""`python -m worker demo`: the runner doing its job, for a newcomer (`make run` starts with it).

It starts its own throwaway redis-server and a worker process, then: jobs go through Redis to
the worker; Redis is stopped and the same jobs run inline in this process; Redis comes back
and queueing resumes without restarting anything. It only ever stops the Redis it started.

Before anything starts it checks what `make run` needs next: Postgres (DATABASE_URL), and that
the configured Redis (REDIS_URL, where the worker runs after the demo) accepts the credentials;
a problem is one line with the fix. Ctrl-C stops the demo cleanly, worker and Redis included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

import asyncpg

from core.deps import connect_postgres
from devservices.redis import RedisServer
from settings import Settings, SettingsError, load_settings
from worker.ledger.migrate import apply_migrations, postgres_problem
from worker.ops.doctor import check_redis
from worker.producer import Producer
from worker.telemetry import configure_logging

__all__ = ["main"]


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


async def _pump(stream: asyncio.StreamReader) -> None:
    async for line in stream:
        print(f"    [worker] {line.decode().rstrip()}", flush=True)


def _stop_if(interrupted: asyncio.Event) -> None:
    """End the demo at the next step once Ctrl-C was pressed, even if a cancellation got lost."""
    if interrupted.is_set():
        raise asyncio.CancelledError


async def _enqueue_samples(producer: Producer, label: str, interrupted: asyncio.Event) -> None:
    for n in range(1, 4):
        _stop_if(interrupted)
        handle = await producer.enqueue_job("ping", {"message": f"{label} #{n}"})
        result = await handle.result(timeout=10)
        mode, ran, message = handle.mode, result["mode"], result["message"]
        print(f"    job {handle.job_id[:8]}  mode={mode:<6}  ran {ran}: {message}", flush=True)


async def _send_welcome(producer: Producer, label: str) -> None:
    message = {
        "to": [{"email": "newcomer@example.com", "name": "Zoë Newcomer"}],
        "template": "welcome",
        "context": {"firstName": "Zoë"},
    }
    handle = await producer.enqueue_job("send_email", {"message": message})
    result = await handle.result(timeout=30)
    outcome = f"{result['status']} through the {result['transport']} transport"
    print(f"    send_email {handle.job_id[:8]}  mode={handle.mode:<6}  {label}: {outcome}", flush=True)


async def _prepare_postgres(settings: Settings) -> str | None:
    """Apply the migrations; None, or the one-line problem with DATABASE_URL and its fix."""
    try:
        conn = await connect_postgres(settings, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return postgres_problem(settings, exc)
    try:
        await apply_migrations(conn, schema=settings.database_schema)
    finally:
        await conn.close()
    return None


async def _check_configured_redis(settings: Settings) -> str | None:
    """The Redis the worker uses after the demo: refused credentials (or TLS) are a problem to
    fix now; a Redis that is only down is worth a note (the worker waits for it)."""
    if not settings.redis_enabled:
        return None
    check = await check_redis(settings)
    if check.state != "not working":
        return None
    if "password" in check.fix or "TLS" in check.fix:
        detail = check.detail.removeprefix("BackendRefused: ").rstrip(".")
        return f"REDIS_URL ({settings.redis_url_redacted}): {detail}; {check.fix}"
    _say(
        f"Note: nothing answers at REDIS_URL ({settings.redis_url_redacted}). The demo uses a Redis "
        "of its own; the worker that follows it waits for yours."
    )
    return None


async def _wait_until_queueing(producer: Producer, timeout: float = 10.0) -> float:
    started = time.monotonic()
    await asyncio.wait_for(producer.backend.wait_until_up(), timeout)
    return time.monotonic() - started


async def _demo(settings: Settings, interrupted: asyncio.Event) -> None:
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
                _stop_if(interrupted)
                _say("1. Redis is up: jobs are queued and the worker runs them")
                await _enqueue_samples(producer, "through Redis", interrupted)
                await _send_welcome(producer, "delivered by the worker")

                _stop_if(interrupted)
                _say("2. Redis stopped: the same jobs run inline, here, at once")
                print(
                    "    (Expect warnings: the worker and this producer each log `redis unavailable`.\n"
                    "    If an enqueue was in flight as Redis went away, its reply is lost and nobody can\n"
                    "    tell whether the job landed: the producer logs `enqueue reply lost, running\n"
                    "    inline`, runs it here, and withdraws the queued copy once Redis is back, unless\n"
                    "    a worker started it.)",
                    flush=True,
                )
                redis_server.stop()
                await _enqueue_samples(producer, "while Redis is down", interrupted)
                await _send_welcome(producer, "delivered inline")

                _stop_if(interrupted)
                _say("3. Redis is back: queueing resumes by itself")
                redis_server.restart()
                waited = await _wait_until_queueing(producer)
                print(f"    producer saw Redis again after {waited * 1000:.0f} ms")
                await asyncio.sleep(1.5)  # the worker reconnects with backoff
                await _enqueue_samples(producer, "through Redis again", interrupted)
        finally:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM)  # after a Ctrl-C it may have stopped already
            await asyncio.wait_for(worker.wait(), 30)
            await pump


async def _run_demo(settings: Settings) -> bool:
    """The demo; True if Ctrl-C ended it (its cleanup has then stopped the worker and Redis)."""
    task = asyncio.current_task()
    assert task is not None
    interrupted = asyncio.Event()

    def on_ctrl_c() -> None:
        interrupted.set()
        task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, on_ctrl_c)
    try:
        await _demo(settings, interrupted)
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return interrupted.is_set()


async def _preflight(settings: Settings) -> str | None:
    return await _prepare_postgres(settings) or await _check_configured_redis(settings)


def main() -> int:
    try:
        settings = load_settings(log_format="console")
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    configure_logging(settings)
    try:
        problem = asyncio.run(_preflight(settings))
        if problem is not None:
            sys.stderr.write(f"error: {problem}\n")
            return 2
        interrupted = asyncio.run(_run_demo(settings))
    except KeyboardInterrupt:  # during the checks, before anything was started
        interrupted = True
    if interrupted:
        print("\n=== Demo interrupted (Ctrl-C): its worker and throwaway Redis are stopped", flush=True)
        return 130
    mail_dir = os.path.abspath(settings.email_file_dir)
    _say(f"Mail went to {mail_dir} as .eml files (no SendGrid or SMTP configured); open one to read it")
    _say("Demo done. Next: the worker on your configured Redis (Ctrl-C stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
