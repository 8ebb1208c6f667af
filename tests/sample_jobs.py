"""Jobs used only by the tests, in a registry of their own, to exercise every outcome."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

from core import JobContext, Registry, define
from core.enqueue import ENQUEUE
from core.errors import PermanentError, TransientError
from core.flow import RateCost
from jobs import ping

__all__ = ["RUNS", "TEST_REGISTRY", "TRIES"]

# What ran, in this process: (key, mode, try). Queued tests run the worker in-process.
RUNS: list[tuple[str, str, int]] = []
TRIES: Counter[str] = Counter()


async def record(ctx: JobContext, *, key: str) -> dict[str, Any]:
    """Record that the job ran."""
    RUNS.append((key, ctx.mode, ctx.job_try))
    return {"key": key, "mode": ctx.mode}


async def refuse(ctx: JobContext, *, reason: str) -> None:
    """Always fail permanently."""
    RUNS.append((reason, ctx.mode, ctx.job_try))
    raise PermanentError(f"refused: {reason}")


async def broken(ctx: JobContext, *, key: str) -> None:
    """A bug: an unexpected exception is permanent."""
    RUNS.append((key, ctx.mode, ctx.job_try))
    raise KeyError(key)


async def flaky(ctx: JobContext, *, key: str, failures: int) -> dict[str, Any]:
    """Fail transiently `failures` times, then succeed."""
    TRIES[key] += 1
    RUNS.append((key, ctx.mode, ctx.job_try))
    if TRIES[key] <= failures:
        raise TransientError(f"provider hiccup {TRIES[key]}")
    return {"key": key, "tries": ctx.job_try}


async def sleepy(ctx: JobContext, *, seconds: float) -> str:
    """Sleep; its definition has a short timeout."""
    await asyncio.sleep(seconds)
    return "woke"


async def takes_any(ctx: JobContext, *, data: Any) -> Any:
    """Accept anything, to test serializability checks."""
    return data


async def follow_up(ctx: JobContext, *, key: str) -> str:
    """Queue `record` as a follow-up job, as the analytics jobs queue emails."""
    enqueue = await ctx.deps.get(ENQUEUE)
    return await enqueue("record", {"key": key}, job_id=f"follow-up:{key}")


async def follow_up_later(ctx: JobContext, *, key: str, seconds: float) -> str:
    """Wait, then queue `record` as a follow-up (a test takes Redis away meanwhile)."""
    await asyncio.sleep(seconds)
    enqueue = await ctx.deps.get(ENQUEUE)
    return await enqueue("record", {"key": key}, job_id=f"follow-up:{key}")


async def sleepy_marked(ctx: JobContext, *, seconds: float) -> dict[str, Any]:
    """Sleep; say when it started, which try and which start of the job this was."""
    started = time.time()
    await asyncio.sleep(seconds)
    return {"started": started, "job_try": ctx.job_try, "start": ctx.start_number}


async def stamp(ctx: JobContext, *, key: str, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep `seconds`; say when it started and ended, in which process, on which try."""
    started = time.time()
    await asyncio.sleep(seconds)
    return {"key": key, "start": started, "end": time.time(), "pid": os.getpid(), "job_try": ctx.job_try}


async def patient(ctx: JobContext, *, steps: int, step_s: float = 0.05) -> dict[str, Any]:
    """Work in steps, reporting progress after each and stopping when asked to."""
    for done in range(steps):
        ctx.raise_if_cancelled()
        await asyncio.sleep(step_s)
        ctx.progress((done + 1) / steps, f"{done + 1} of {steps} steps")
    return {"steps": steps}


async def kills_its_worker(ctx: JobContext) -> None:
    """Take the whole worker process down, as a poison job can (segfaulting C code, say)."""
    RUNS.append(("kills", ctx.mode, ctx.job_try))
    os._exit(17)


async def bad_result(ctx: JobContext, *, key: str) -> object:
    """Return something JSON cannot carry."""
    return object()


TEST_REGISTRY = Registry(
    [
        define(ping, timeout=10, max_tries=3),
        define(record, max_tries=3),
        define(refuse, max_tries=5),
        define(broken, max_tries=5),
        define(flaky, max_tries=4),
        define(sleepy, timeout=0.3, max_tries=2),
        define(takes_any),
        define(bad_result),
        define(follow_up),
        define(follow_up_later),
        define(record, name="record_spooled", fallback="spool", inline_if_spool_down=False),
        define(record, name="record_durable", durable=True),
        define(record, name="record_rejecting", fallback="reject"),
        define(sleepy, name="sleepy_long", timeout=60, max_tries=5),
        define(sleepy_marked, timeout=60, max_tries=2),
        define(kills_its_worker, max_tries=5),
        define(stamp, timeout=30),
        define(stamp, name="stamp_ai", queue="ai", timeout=30),
        define(stamp, name="stamp_limited", rate_limits=[RateCost("test_rate")], timeout=30),
        define(patient, timeout=60, max_tries=2),
    ]
)
