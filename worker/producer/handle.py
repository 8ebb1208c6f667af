"""`JobHandle`: what an enqueue returns, in every mode alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from core.codec import CodecError
from core.control import Progress
from core.enqueue import Placement
from core.errors import BackendError, JobFailed
from worker.backend import QueueBackend

__all__ = ["JobHandle"]

R = TypeVar("R")

# How often a waiting `result()` reads past an open breaker (each try is bounded by the timeouts).
_PAST_BREAKER_EVERY_S = 0.5


class JobHandle(Generic[R]):
    """The job id, where the job went (`mode`: queued, inline or spooled), whether the id was
    already taken (`duplicate`), and `await result()`."""

    def __init__(
        self,
        job_id: str,
        name: str,
        mode: Placement,
        *,
        duplicate: bool = False,
        backend: QueueBackend | None = None,
        task: asyncio.Future[Any] | None = None,
        queue: str | None = None,
        progress: Callable[[], Progress | None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.mode = mode
        self.duplicate = duplicate
        self.queue = queue  # the Redis key of the queue a queued job went to
        self._backend = backend
        self._task = task
        self._inline_progress = progress

    def __repr__(self) -> str:
        dup = " duplicate" if self.duplicate else ""
        return f"<JobHandle {self.name} {self.job_id} mode={self.mode}{dup}>"

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def progress(self) -> dict[str, Any] | None:
        """The latest progress the running job reported (`fraction`, `message`, `at_ms`), or
        None (not started, finished, or it reports none)."""
        if self._inline_progress is not None:
            latest = self._inline_progress()
            return latest.to_dict() if latest is not None else None
        if self._backend is None or self.queue is None or not self._backend.usable:
            return None
        try:
            return (await self._backend.job([self.queue], self.job_id)).progress
        except BackendError:
            return None

    async def result(self, timeout: float | None = None) -> R:
        """The job's result; raises `JobFailed` if it failed and `TimeoutError` after `timeout` s."""
        if self._task is not None:
            value: R = await asyncio.wait_for(asyncio.shield(self._task), timeout)
            return value
        if self._backend is None:
            raise RuntimeError("handle has neither a task nor a backend")
        return await self._poll_result(self._backend, timeout)

    async def _poll_result(self, backend: QueueBackend, timeout: float | None) -> R:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        next_despite = 0.0
        while True:
            # A spooled job has no result until Redis is back and a worker has run it. While the
            # producer's breaker is open (a blip, and its probe has not closed it yet) the result
            # may be in Redis all the same: look for it past the breaker, at a calmer pace.
            record = None
            despite = not backend.usable
            if not despite or time.monotonic() >= next_despite:
                if despite:
                    next_despite = time.monotonic() + _PAST_BREAKER_EVERY_S
                try:
                    record = await backend.result(self.job_id, despite_breaker=despite)
                except BackendError:
                    record = None
                except CodecError as exc:  # not a result we wrote, or a forged one
                    raise JobFailed(self.job_id, exc.error_type, str(exc), "permanent") from None
            if record is not None:
                if record.success:
                    return record.value  # type: ignore[no-any-return]
                error = record.error or {}
                raise JobFailed(
                    self.job_id,
                    error.get("type", "Error"),
                    error.get("message", ""),
                    error.get("kind", "permanent"),
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.job_id} has no result after {timeout}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
