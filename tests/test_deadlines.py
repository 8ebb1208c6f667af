"""Job timeouts from one timer (worker/execution/deadlines.py): a job past its time ends in
JobTimeout, a cancellation from elsewhere (the worker stopping) stays a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from core.errors import JobTimeout
from worker.execution.deadlines import Deadlines


async def test_a_job_past_its_timeout_is_cancelled_with_job_timeout_on_time() -> None:
    deadlines = Deadlines()
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=r"longer than its 0\.1s timeout"):
        await deadlines.run(asyncio.sleep(5), 0.1)
    assert 0.09 <= time.monotonic() - started < 0.5


async def test_many_jobs_each_end_at_their_own_deadline() -> None:
    deadlines = Deadlines()

    async def attempt(seconds: float, timeout: float) -> str:
        try:
            await deadlines.run(asyncio.sleep(seconds), timeout)
        except JobTimeout:
            return "timeout"
        return "done"

    # A long deadline first, then shorter ones: the one timer moves earlier for them.
    outcomes = await asyncio.gather(
        attempt(0.05, 10), attempt(0.3, 0.1), attempt(0.05, 0.2), attempt(0.4, 0.2), attempt(0.01, 0.02)
    )
    assert list(outcomes) == ["done", "timeout", "done", "timeout", "done"]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines()
    task = asyncio.ensure_future(deadlines.run(asyncio.sleep(5), 10))
    await asyncio.sleep(0.01)
    task.cancel()  # the worker stopping past its grace
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_inner_deadline_ends_the_inner_work_and_the_outer_goes_on() -> None:
    deadlines = Deadlines()

    async def outer() -> str:
        with contextlib.suppress(JobTimeout):
            await deadlines.run(asyncio.sleep(5), 0.05)  # an inline job inside a job, say
        await asyncio.sleep(0.1)  # the outer deadline is far: it is not cancelled
        return "outer done"

    assert await deadlines.run(outer(), 2) == "outer done"
