"""The inline executor: a job run here and now, every try, through the same attempt path the
worker uses (same argument loading, timeout, retry classification, log line, dead letter).

Inline work happens in the caller's process (a web app while Redis is down), so it is bounded:
at most `INLINE_MAX_CONCURRENT` jobs run at once. By default the caller waits for its job; a
caller that finds every slot taken waits for one up to `INLINE_WAIT_TIMEOUT` seconds, then gets
an `EnqueueError` (backpressure with a clear answer, never a silent drop). With
`background=True` the call returns at once and the job runs as a tracked task; at most
`INLINE_MAX_BACKGROUND` are accepted at a time (a caller beyond that waits for room), and
`close()` waits for them. Rate limits apply per process (a run waits for its turn), and
progress and cancel requests work as in a worker, within this process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from core.context import Mode
from core.control import JobControl
from core.errors import EnqueueError, JobFailed
from core.registry import JobDefinition
from settings import Settings
from worker.execution import AttemptRunner
from worker.flow import LocalLimiter, RateLimits

__all__ = ["InlineExecutor"]


class InlineExecutor:
    def __init__(self, settings: Settings, attempts: AttemptRunner) -> None:
        self._settings = settings
        self._attempts = attempts
        # Rate limits apply inline too, per process: a run waits for its turn.
        self._limits = RateLimits(settings)
        self._limiter = LocalLimiter(self._limits)
        # Progress and cancel requests of the jobs running inline in this process.
        self.controls: dict[str, JobControl] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self._slots = asyncio.Semaphore(settings.inline_max_background)
        self._running = asyncio.Semaphore(settings.inline_max_concurrent)

    async def run(
        self,
        job: JobDefinition[Any, Any],
        *,
        job_id: str,
        kwargs: Mapping[str, Any],
        mode: Mode = "inline",
        traceparent: str | None = None,
        queue: str | None = None,
    ) -> Any:
        """Run every try here and now; return the result or raise `JobFailed` (a job that
        stopped on a cancel request raises it with `error_type` "JobCancelled")."""
        enqueue_time = datetime.now(UTC)
        job_try = 1
        control = self.controls[job_id] = JobControl(job_id)
        costs = self._limits.costs(job, kwargs)
        try:
            while True:
                await self._limiter.wait_turn(costs)
                attempt = await self._attempts.attempt(
                    job,
                    job_id=job_id,
                    kwargs=kwargs,
                    job_try=job_try,
                    mode=mode,
                    enqueue_time=enqueue_time,
                    traceparent=traceparent,
                    control=control,
                    queue=queue,
                )
                if attempt.outcome == "complete":
                    return attempt.result
                if attempt.outcome in ("failed", "cancelled"):
                    raise attempt.error or JobFailed(job_id, "Error", "the job failed", "permanent")
                await asyncio.sleep(attempt.retry_in or 0)
                job_try += 1
        finally:
            if self.controls.get(job_id) is control:
                del self.controls[job_id]

    async def start(
        self,
        job: JobDefinition[Any, Any],
        *,
        job_id: str,
        kwargs: Mapping[str, Any],
        background: bool,
        traceparent: str | None = None,
        queue: str | None = None,
    ) -> asyncio.Future[Any]:
        """Start the run; wait for it unless `background` (then hold one of the bounded slots).

        Raises `EnqueueError` when every inline slot stayed taken for `INLINE_WAIT_TIMEOUT`."""
        if background:
            await self._slots.acquire()
            task = asyncio.ensure_future(self._bounded(job, job_id, kwargs, traceparent, queue))
            self._background.add(task)
            task.add_done_callback(self._background_done)
            return task
        await self._take_slot(job.name)
        task = asyncio.ensure_future(self._run_holding_slot(job, job_id, kwargs, traceparent, queue))
        await asyncio.wait([task])
        return task

    async def _take_slot(self, name: str) -> None:
        wait = self._settings.inline_wait_timeout
        try:
            async with asyncio.timeout(wait):
                await self._running.acquire()
        except TimeoutError:
            limit = self._settings.inline_max_concurrent
            raise EnqueueError(
                f"{name}: Redis is unusable and {limit} jobs already run inline in this process "
                f"(INLINE_MAX_CONCURRENT); none finished within {wait:g}s (INLINE_WAIT_TIMEOUT). Retry later."
            ) from None

    async def _bounded(
        self,
        job: JobDefinition[Any, Any],
        job_id: str,
        kwargs: Mapping[str, Any],
        traceparent: str | None,
        queue: str | None = None,
    ) -> Any:
        await self._running.acquire()  # a background job waits for a slot; nobody waits on it
        return await self._run_holding_slot(job, job_id, kwargs, traceparent, queue)

    async def _run_holding_slot(
        self,
        job: JobDefinition[Any, Any],
        job_id: str,
        kwargs: Mapping[str, Any],
        traceparent: str | None,
        queue: str | None = None,
    ) -> Any:
        try:
            return await self.run(job, job_id=job_id, kwargs=kwargs, traceparent=traceparent, queue=queue)
        finally:
            self._running.release()

    def lease_s(self, job: JobDefinition[Any, Any]) -> float:
        """How long a full inline run of `job` can take, every try and backoff included."""
        settings = self._attempts.settings
        tries = self._attempts.max_tries_for(job)
        return self._attempts.timeout_for(job) * tries + settings.retry_backoff_max * (tries - 1) + 60.0

    def _background_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        self._slots.release()
        # Mark the outcome as retrieved; the outcome path already logged a failure.
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
