"""A worker process for the queue benchmark (`bench.bench_queues`), configured by the usual
environment variables (REDIS_URL, QUEUE_NAME, WORKER_QUEUES, WORKER_QUEUE_CONCURRENCY,
RATE_LIMITS...), on a registry of the benchmark's own jobs:

- `ai_like`: 200 ms, on the `ai` queue (capped per worker, as the AI jobs are);
- `ai_like_gated`: 200 ms behind a 4-slot semaphore inside the job, on the one default queue:
  how AI jobs were held to the provider's concurrency before named queues;
- `urgent`: returns when it started, on `critical` (or `default` in the single-queue run);
- `limited`: returns when it started, spending one unit of the `bench_rate` limit.
"""

from __future__ import annotations

import asyncio
import sys
import time

from core import JobContext, Registry, define
from core.flow import RateCost
from settings import load_settings
from worker.engine import WorkerService
from worker.telemetry import configure_logging

__all__ = ["QUEUE_BENCH_REGISTRY"]

_GATE = asyncio.Semaphore(4)


async def ai_like(ctx: JobContext) -> None:
    await asyncio.sleep(0.2)


async def ai_like_gated(ctx: JobContext) -> None:
    async with _GATE:
        await asyncio.sleep(0.2)


async def urgent(ctx: JobContext) -> float:
    return time.time()


async def limited(ctx: JobContext) -> float:
    return time.time()


QUEUE_BENCH_REGISTRY = Registry(
    [
        define(ai_like, queue="ai"),
        define(ai_like_gated, timeout=3600),
        define(urgent, queue="critical"),
        define(limited, rate_limits=[RateCost("bench_rate")]),
    ]
)


async def _run() -> int:
    settings = load_settings()
    configure_logging(settings)
    return await WorkerService(settings, registry=QUEUE_BENCH_REGISTRY).run()


if __name__ == "__main__":
    sys.exit(asyncio.run(_run()))
