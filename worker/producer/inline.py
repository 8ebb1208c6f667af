"""The inline executor: a job run here and now, every try, through the same attempt path the
worker uses (same argument loading, timeout, retry classification, log line, dead letter).

By default the caller waits for the job. With `background=True` it returns at once and the
job runs as a tracked task; at most `INLINE_MAX_BACKGROUND` run at a time (a caller beyond
that waits for a slot: backpressure, never a drop), and `close()` waits for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from core.context import Mode
from core.errors import JobFailed
from core.registry import JobDefinition
from settings import Settings
from worker.execution import AttemptRunner

__all__ = ["InlineExecutor"]


class InlineExecutor:
    def __init__(self, settings: Settings, attempts: AttemptRunner) -> None:
        self._attempts = attempts
        self._background: set[asyncio.Future[Any]] = set()
        self._slots = asyncio.Semaphore(settings.inline_max_background)

    async def run(
        self,
        job: JobDefinition[Any, Any],
        *,
        job_id: str,
        kwargs: Mapping[str, Any],
        mode: Mode = "inline",
        traceparent: str | None = None,
    ) -> Any:
        """Run every try here and now; return the result or raise `JobFailed`."""
        enqueue_time = datetime.now(UTC)
        job_try = 1
        while True:
            attempt = await self._attempts.attempt(
                job,
                job_id=job_id,
                kwargs=kwargs,
                job_try=job_try,
                mode=mode,
                enqueue_time=enqueue_time,
                traceparent=traceparent,
            )
            if attempt.outcome == "complete":
                return attempt.result
            if attempt.outcome == "failed":
                raise attempt.error or JobFailed(job_id, "Error", "the job failed", "permanent")
            await asyncio.sleep(attempt.retry_in or 0)
            job_try += 1

    async def start(
        self,
        job: JobDefinition[Any, Any],
        *,
        job_id: str,
        kwargs: Mapping[str, Any],
        background: bool,
        traceparent: str | None = None,
    ) -> asyncio.Future[Any]:
        """Start the run; wait for it unless `background` (then hold one of the bounded slots)."""
        if background:
            await self._slots.acquire()
        task = asyncio.ensure_future(self.run(job, job_id=job_id, kwargs=kwargs, traceparent=traceparent))
        if background:
            self._background.add(task)
            task.add_done_callback(self._background_done)
        else:
            await asyncio.wait([task])
        return task

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
