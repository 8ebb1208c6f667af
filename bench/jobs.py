"""The benchmark's jobs, for our worker (a registry) and for plain arq (functions)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from core import JobContext, JobDefinition, Registry, define

__all__ = ["ARQ_FUNCTIONS", "BENCH_JOBS", "BENCH_REGISTRY", "noop", "sleep10", "stamp"]


async def noop(ctx: JobContext) -> None:
    """Does nothing: the runner's own cost."""


async def sleep10(ctx: JobContext) -> None:
    """Waits 10 ms, like a job that calls a fast service."""
    await asyncio.sleep(0.01)


async def stamp(ctx: JobContext) -> float:
    """Returns the wall-clock time it started, for pickup latency."""
    return time.time()


# Bound at module level, so `python -m worker run --jobs bench.jobs` runs them too (bench_startup).
BENCH_JOBS: list[JobDefinition[Any, Any]] = [define(noop), define(sleep10), define(stamp)]
BENCH_REGISTRY = Registry(BENCH_JOBS)


async def _arq_noop(ctx: dict[str, Any]) -> None:
    return None


async def _arq_sleep10(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)


async def _arq_stamp(ctx: dict[str, Any]) -> float:
    return time.time()


_arq_noop.__qualname__ = _arq_noop.__name__ = "noop"
_arq_sleep10.__qualname__ = _arq_sleep10.__name__ = "sleep10"
_arq_stamp.__qualname__ = _arq_stamp.__name__ = "stamp"
ARQ_FUNCTIONS = [_arq_noop, _arq_sleep10, _arq_stamp]
