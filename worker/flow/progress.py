"""Running jobs' progress, written where `status` and handles read it.

A job may report as often as it likes (`ctx.progress(...)`); the writer keeps the latest
report per job and writes all of them in one pipelined call at most twice a second, so progress
costs a worker at most two commands a second however many jobs report, and nothing when none
does.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson

from core.control import JobControl
from core.errors import BackendError
from worker.backend import QueueBackend

__all__ = ["ProgressWriter"]

_WRITE_EVERY_S = 0.5
_KEEP_MS = 3_600_000  # a report outlives its job's run by far; the result replaces it in `status`


class ProgressWriter:
    def __init__(self, backend: QueueBackend) -> None:
        self._backend = backend
        self._dirty: dict[str, JobControl] = {}
        self._writer: asyncio.Task[None] | None = None

    def mark(self, control: JobControl) -> None:
        """`control` has a new report; it is written within half a second."""
        self._dirty[control.job_id] = control
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_soon())

    async def close(self) -> None:
        """Drop reports not written yet (the jobs are over) and stop the pending write."""
        self._dirty.clear()
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write_soon(self) -> None:
        try:
            await asyncio.sleep(_WRITE_EVERY_S)
            reports, self._dirty = self._dirty, {}
            items = [
                (job_id, orjson.dumps(control.latest.to_dict()))
                for job_id, control in reports.items()
                if control.latest is not None
            ]
            if self._backend.usable:
                await self._backend.write_progress(items, ttl_ms=_KEEP_MS)
        except BackendError:
            pass  # progress is best effort: the next report is written when Redis is back
        except asyncio.CancelledError:
            self._writer = None
            raise
        self._writer = None
        if self._dirty:  # reported while this write was on its way
            self._writer = asyncio.ensure_future(self._write_soon())
