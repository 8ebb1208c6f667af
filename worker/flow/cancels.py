"""Cancel requests for running jobs: the worker asks the backend once a second, while it runs
jobs, which of them someone asked to cancel, and tells those jobs (`ctx.cancel_requested`).
An idle worker sends nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog

from core.control import JobControl
from core.errors import BackendError
from worker.backend import QueueBackend

__all__ = ["CancelWatcher"]

log = structlog.get_logger(__name__)

_CHECK_EVERY_S = 1.0


class CancelWatcher:
    def __init__(self, backend: QueueBackend, running: Callable[[], Mapping[str, JobControl]]) -> None:
        self._backend = backend
        self._running = running

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_EVERY_S)
            running = self._running()
            asking = [job_id for job_id, control in running.items() if not control.cancel_requested]
            if not asking or not self._backend.usable:
                continue
            try:
                requested = await self._backend.cancel_requests(asking)
            except BackendError:
                continue  # the claim loop reports outages
            for job_id in requested:
                control = running.get(job_id)
                if control is not None:
                    control.request_cancel()
                    log.info("cancel requested; told the job", job_id=job_id)
