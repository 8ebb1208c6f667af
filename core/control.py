"""A running job's side channel to the runner: the progress it reports and a cancel request.

The runner makes one `JobControl` per attempt. A job reports progress with
`ctx.progress(0.4, "40 of 100 recipients")`; the runner writes the latest report where `status`
and handles read it, at most a few writes a second however often the job reports. A cancel
request (`cancel JOB_ID`) sets `cancel_requested`; the job honours it where it is safe to stop
(`ctx.raise_if_cancelled()` between recipients, say), or finishes if it cannot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_PROGRESS_MESSAGE", "JobControl", "Progress"]

MAX_PROGRESS_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class Progress:
    fraction: float  # 0 to 1
    message: str | None
    at_ms: int  # when it was reported

    def to_dict(self) -> dict[str, object]:
        return {"fraction": self.fraction, "message": self.message, "at_ms": self.at_ms}


class JobControl:
    """Progress and cancellation for one attempt; `on_progress` is told of each new report."""

    __slots__ = ("_on_progress", "cancel_requested", "job_id", "latest")

    def __init__(self, job_id: str, on_progress: Callable[[JobControl], None] | None = None) -> None:
        self.job_id = job_id
        self.latest: Progress | None = None
        self.cancel_requested = False
        self._on_progress = on_progress

    def report(self, fraction: float, message: str | None = None) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
            raise ValueError(f"progress: {fraction!r} is not a fraction; use a number from 0 to 1")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"progress message: {message!r} is not text")
        shown = message[:MAX_PROGRESS_MESSAGE] if message is not None else None
        self.latest = Progress(min(max(float(fraction), 0.0), 1.0), shown, int(time.time() * 1000))
        if self._on_progress is not None:
            self._on_progress(self)

    def request_cancel(self) -> None:
        self.cancel_requested = True
