"""One measurement each, for one kind of worker; `bench_worker` repeats and interleaves them.

Every scenario starts the kind's worker in its own process on a fresh queue, warms it with
one job, and measures against Redis's own counters (see `harness.Counters`).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Client, Counters, Delta, OurClient, WorkerProcess, client_for

__all__ = [
    "Drain",
    "Latency",
    "Memory",
    "drain",
    "end_to_end",
    "enqueue_rates",
    "idle_commands",
    "memory",
    "pickup_latency",
]

LOGS = Path("/tmp/mb-bench-logs")
FILL_LEAD_S = 2.0  # a backlog is written this long before it comes due


@dataclass
class Env:
    url: str
    logs: Path = LOGS
    signing_key: str | None = None  # JOB_SIGNING_KEYS for our worker and producer
    otel_endpoint: str | None = None  # OTEL_EXPORTER_OTLP_ENDPOINT for our worker and producer


@asynccontextmanager
async def running(
    kind: str, env: Env, worker_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[WorkerProcess, Client, Counters]]:
    """A warmed-up worker of `kind` on a fresh queue, a client and counters."""
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    env.logs.mkdir(parents=True, exist_ok=True)
    if env.signing_key is not None:
        worker_env = {**(worker_env or {}), "JOB_SIGNING_KEYS": env.signing_key}
    if env.otel_endpoint is not None:
        worker_env = {**(worker_env or {}), "OTEL_EXPORTER_OTLP_ENDPOINT": env.otel_endpoint}
    async with WorkerProcess(kind, env.url, queue, env.logs, worker_env) as worker:
        client = await client_for(
            kind, env.url, queue, signing_key=env.signing_key, otel_endpoint=env.otel_endpoint
        )
        try:
            await client.result(await client.enqueue("noop"), timeout=60)
            yield worker, client, Counters(client.redis)
        finally:
            await client.close()


async def _until_empty(client: Client, counters: Counters, step: float = 0.002) -> list[tuple[float, int]]:
    """Poll the queue length until it is empty; return (time, length) samples."""
    curve = []
    while True:
        left = await counters.zcard(client.queue)
        now = time.time()
        curve.append((now, left))
        if left == 0:
            return curve
        await asyncio.sleep(step)


@dataclass
class Drain:
    rate: float  # jobs/s from due time to empty queue
    enqueue: Delta  # the fill
    work: Delta  # the worker's side
    curve: list[tuple[float, int]] = field(default_factory=list)  # (seconds since due, left)


async def drain(kind: str, env: Env, job: str, count: int) -> Drain:
    """A backlog of `count` jobs, all due at one instant, drained by an idle, warm worker."""
    async with running(kind, env) as (_, client, counters):
        due_ms = int((time.time() + FILL_LEAD_S) * 1000)
        await counters.start()
        await client.fill(job, count, due_ms)
        filled = await counters.stop()
        if time.time() * 1000 > due_ms:
            raise RuntimeError(f"{kind}: filling {count} jobs took longer than {FILL_LEAD_S} s")
        await counters.start()
        await asyncio.sleep(due_ms / 1000 - time.time() - 0.02)
        curve = await _until_empty(client, counters)
        work = await counters.stop()
    elapsed = curve[-1][0] - due_ms / 1000
    return Drain(count / elapsed, filled, work, [(t - due_ms / 1000, n) for t, n in curve])


async def end_to_end(kind: str, env: Env, count: int, callers: int = 8) -> Delta:
    """Redis cost of `count` jobs enqueued one call at a time (by `callers` concurrent callers)
    into a running worker: enqueue + claim + run + record."""
    async with running(kind, env) as (_, client, counters):
        await counters.start()

        async def caller(n: int) -> None:
            for _ in range(n):
                await client.enqueue("noop")

        await asyncio.gather(*(caller(count // callers) for _ in range(callers)))
        await _until_empty(client, counters, step=0.01)
        return await counters.stop()


@dataclass
class Latency:
    samples_ms: list[float]
    cost: Delta  # the window's Redis cost (enqueues, pickups, records; no result reads)
    jobs: int


async def pickup_latency(
    kind: str, env: Env, samples: int, gap: float, load_rate: float | None = None
) -> Latency:
    """Enqueue-to-start time of `stamp` jobs, one at a time `gap` s apart, optionally while a
    separate process enqueues no-op jobs at `load_rate` jobs/s."""
    async with running(kind, env) as (_, client, counters):
        load = None
        if load_rate:
            seconds = samples * gap + 3.0
            load = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.load",
                kind,
                env.url,
                client.queue,
                str(load_rate),
                str(seconds),
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # steady state
        await asyncio.sleep(gap)
        await counters.start()
        sent: list[tuple[float, Any]] = []
        for _ in range(samples):
            t0 = time.time()
            sent.append((t0, await client.enqueue("stamp")))
            await asyncio.sleep(gap)
        cost = await counters.stop()
        latencies = [(await client.result(handle) - t0) * 1000 for t0, handle in sent]
        if load is not None:
            await load.wait()
    return Latency(latencies, cost, samples)


async def enqueue_rates(kind: str, env: Env, count: int, callers: int = 32) -> dict[str, float]:
    """Producer-side jobs/s with no worker: one call at a time, concurrent calls, bulk."""
    client = await client_for(kind, env.url, f"bench:{uuid.uuid4().hex[:8]}")
    try:
        await client.enqueue("noop")  # connect, load scripts
        started = time.perf_counter()
        for _ in range(count // 4):
            await client.enqueue("noop")
        rates = {"sequential": count // 4 / (time.perf_counter() - started)}

        async def caller(n: int) -> None:
            for _ in range(n):
                await client.enqueue("noop")

        started = time.perf_counter()
        await asyncio.gather(*(caller(count // callers) for _ in range(callers)))
        rates["concurrent"] = count // callers * callers / (time.perf_counter() - started)
        if isinstance(client, OurClient):
            bulk = count * 5
            started = time.perf_counter()
            handles = await client.enqueue_many("noop", bulk)
            rates["bulk"] = bulk / (time.perf_counter() - started)
            if handles[-1].mode != "queued":
                raise RuntimeError("bulk enqueue fell back to inline")
        await client.redis.flushdb(asynchronous=True)  # a large DB takes longer than a reply timeout
    finally:
        await client.close()
    return rates


async def idle_commands(
    kind: str, env: Env, seconds: float, worker_env: dict[str, str] | None = None
) -> Delta:
    """What an idle worker sends to Redis in `seconds` (after a second to settle)."""
    async with running(kind, env, worker_env) as (_, _client, counters):
        await asyncio.sleep(1.0)
        await counters.start()
        await asyncio.sleep(seconds)
        return await counters.stop()


@dataclass
class Memory:
    points: list[tuple[int, float]]  # (jobs run, worker RSS MiB)


async def memory(kind: str, env: Env, total: int, step: int) -> Memory:
    """Worker RSS after 1,000 jobs, then every `step` jobs up to `total`."""
    async with running(kind, env) as (worker, client, counters):
        points = []
        done = 0
        for target in [1_000, *range(step, total + 1, step)]:
            await client.fill("noop", target - done, int(time.time() * 1000))
            await _until_empty(client, counters, step=0.05)
            done = target
            await asyncio.sleep(0.2)  # let the last results be written
            points.append((done, worker.rss_mib()))
    return Memory(points)
