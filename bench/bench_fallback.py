"""Fallback figures: how fast the producer gives up on a dead Redis, what inline costs while the
breaker is open, and how soon queueing resumes. Plain arq (default settings) runs side by side.

    python -m bench.bench_fallback      # prints a markdown section, writes bench/results/fallback.json
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings, create_pool
from pydantic import SecretStr

from bench.database import SERVER_DSN, scratch_database
from bench.stats import summarize, table
from core import JobContext, Registry, define
from devservices.proxy import TcpProxy
from devservices.redis import RedisServer
from settings import Settings
from worker.producer import Producer
from worker.producer.inline import InlineExecutor
from worker.telemetry import configure_logging

RUNS = 7
OPEN_ENQUEUES = 20_000
ARQ_HANG_CAP_S = 3.0
RESULTS = Path(__file__).parent / "results" / "fallback.json"


async def noop(ctx: JobContext) -> None:
    """Does nothing: the benchmark measures the runner, not the job."""


REGISTRY = Registry([define(noop)])


def _settings(url: str, dsn: str, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=SecretStr(url), database_url=SecretStr(dsn), log_format="json", **extra
    )


async def _wait_usable(producer: Producer, timeout: float = 10.0) -> float:
    started = time.perf_counter()
    await asyncio.wait_for(producer.backend.wait_until_up(), timeout)
    return time.perf_counter() - started


async def first_enqueue_refused(dsn: str) -> list[float]:
    samples = []
    with RedisServer() as server:
        async with Producer(_settings(server.url, dsn), registry=REGISTRY) as producer:
            for _ in range(RUNS):
                await _wait_usable(producer)
                assert (await producer.enqueue(noop)).mode == "queued"
                server.kill()
                started = time.perf_counter()
                handle = await producer.enqueue(noop)
                samples.append((time.perf_counter() - started) * 1000)
                assert handle.mode == "inline"
                server.restart()
    return samples


async def first_enqueue_blackholed(dsn: str) -> list[float]:
    samples = []
    with RedisServer() as server:
        for _ in range(RUNS):
            async with TcpProxy("127.0.0.1", server.port) as proxy:
                settings = _settings(proxy.url_for(server.url), dsn)
                async with Producer(settings, registry=REGISTRY) as producer:
                    assert (await producer.enqueue(noop)).mode == "queued"
                    proxy.blackhole()
                    started = time.perf_counter()
                    handle = await producer.enqueue(noop)
                    samples.append((time.perf_counter() - started) * 1000)
                    assert handle.mode == "inline"
    return samples


async def arq_default_against(kind: str) -> str:
    """What plain arq (default settings) does in the same situation."""
    with RedisServer() as server:
        async with TcpProxy("127.0.0.1", server.port) as proxy:
            pool = await create_pool(RedisSettings(host="127.0.0.1", port=proxy.port))
            await pool.enqueue_job("noop")
            if kind == "refused":
                server.kill()
            else:
                proxy.blackhole()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(ARQ_HANG_CAP_S):
                    await pool.enqueue_job("noop")
            except TimeoutError:
                return f"no answer after {ARQ_HANG_CAP_S:.0f} s (no socket timeout: the call hangs)"
            except Exception as exc:
                elapsed = (time.perf_counter() - started) * 1000
                return f"raises {type(exc).__name__} after {elapsed:.1f} ms; the job is not run"
            finally:
                if kind == "refused":
                    server.restart()
                await pool.aclose()
    return "enqueued (unexpected)"


async def overhead_while_open(dsn: str) -> dict[str, list[float]]:
    """Per-enqueue cost with the breaker open, split into the fallback decision and the job run."""
    out: dict[str, list[float]] = {"enqueue_inline_us": [], "run_inline_us": []}
    async with Producer(_settings("redis://127.0.0.1:1/0", dsn), registry=REGISTRY) as producer:
        definition = REGISTRY.get(noop)
        for _ in range(RUNS):
            started = time.perf_counter()
            for _ in range(OPEN_ENQUEUES):
                await producer.enqueue(noop)
            await producer.ledger.drain()  # each inline outcome is written to Postgres
            out["enqueue_inline_us"].append((time.perf_counter() - started) / OPEN_ENQUEUES * 1e6)
            executor = InlineExecutor(producer.settings, producer.runtime.attempts)
            started = time.perf_counter()
            for i in range(OPEN_ENQUEUES):
                await executor.run(definition, job_id=f"direct-{uuid.uuid4().hex}-{i}", kwargs={})
            await producer.ledger.drain()
            out["run_inline_us"].append((time.perf_counter() - started) / OPEN_ENQUEUES * 1e6)
    return out


async def recovery_time(dsn: str, probe_interval: float) -> list[float]:
    samples = []
    with RedisServer() as server:
        settings = _settings(server.url, dsn, redis_probe_interval=probe_interval)
        async with Producer(settings, registry=REGISTRY) as producer:
            for _ in range(RUNS):
                server.kill()
                await producer.enqueue(noop)  # opens the breaker
                await asyncio.sleep(probe_interval * 0.37)  # Redis returns at an arbitrary moment
                server.restart()
                samples.append(await _wait_usable(producer) * 1000)
    return samples


async def main() -> dict[str, Any]:
    configure_logging(_settings("", SERVER_DSN), stream=io.StringIO())  # stdout is the report
    logging.getLogger().setLevel(logging.INFO)  # the realistic cost: one JSON line per job
    # Inline outcomes are recorded in Postgres, as in production: a migrated scratch database.
    async with scratch_database() as dsn:
        return await _measure(dsn)


async def _measure(dsn: str) -> dict[str, Any]:
    refused = summarize(await first_enqueue_refused(dsn))
    blackholed = summarize(await first_enqueue_blackholed(dsn))
    arq_refused = await arq_default_against("refused")
    arq_blackholed = await arq_default_against("blackholed")
    overhead = await overhead_while_open(dsn)
    enqueue_us = summarize(overhead["enqueue_inline_us"])
    run_us = summarize(overhead["run_inline_us"])
    decision_us = summarize(
        [a - b for a, b in zip(overhead["enqueue_inline_us"], overhead["run_inline_us"], strict=True)]
    )
    recovery = summarize(await recovery_time(dsn, 1.0))
    results = {
        "first_enqueue_refused_ms": refused.as_dict(),
        "first_enqueue_blackholed_ms": blackholed.as_dict(),
        "arq_default_refused": arq_refused,
        "arq_default_blackholed": arq_blackholed,
        "enqueue_while_open_us": enqueue_us.as_dict(),
        "run_inline_us": run_us.as_dict(),
        "fallback_decision_us": decision_us.as_dict(),
        "redis_back_to_queueing_ms": recovery.as_dict(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    rows = [
        ["first enqueue, Redis refusing connections", refused.fmt(" ms"), arq_refused],
        ["first enqueue, Redis blackholed", blackholed.fmt(" ms"), arq_blackholed],
        ["enqueue while the breaker is open (no-op job run inline)", enqueue_us.fmt(" µs", 1), "n/a"],
        ["  of which: the run (execution path, log line, Postgres record)", run_us.fmt(" µs", 1), "n/a"],
        ["  of which: validation, breaker check, handle", decision_us.fmt(" µs", 1), "n/a"],
        ["Redis back to queueing again (probe every 1 s)", recovery.fmt(" ms", 0), "n/a (no fallback)"],
    ]
    print("## Fallback when Redis is down\n")
    print(
        f"Median of {RUNS} runs (min, max). Timeouts at their defaults: connect 0.25 s, socket 0.25 s. "
        f"Per-enqueue figures average {OPEN_ENQUEUES:,} calls per run.\n"
    )
    print(table(["figure", "this runner", "plain arq, default settings"], rows))
    return results


if __name__ == "__main__":
    asyncio.run(main())
