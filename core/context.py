"""What a running job receives as its first argument, the same in queued and inline mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from core.control import JobControl
from core.deps import Deps
from core.errors import JobCancelled

__all__ = ["JobContext", "Mode"]

Mode = Literal["queued", "inline"]


@dataclass(slots=True)  # not frozen: one per attempt, and a frozen one costs ~1.2 µs more to make
class JobContext:
    """One attempt's context. Fields a job puts in `report` join that attempt's `job finished` line.
    The runner reads nothing back from it but `report`'s contents: changing a field changes what
    the job itself sees, not its id, tries or retries."""

    job_id: str
    job_name: str
    job_try: int
    max_tries: int
    mode: Mode
    enqueue_time: datetime
    deps: Deps
    log: structlog.typing.FilteringBoundLogger
    report: dict[str, Any] = field(default_factory=dict)
    # The W3C traceparent of the request that enqueued the job, when it came with one.
    traceparent: str | None = None
    # How many times the job has been started, this one included: `job_try` plus the runs that
    # were interrupted (a worker killed, or stopped mid-run), which do not count as tries. A
    # later start of the same job knows every earlier one is over.
    attempt: int = 0
    # Progress reports and cancel requests (see `core.control`).
    control: JobControl | None = None

    @property
    def start_number(self) -> int:
        return self.attempt or self.job_try

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0 to 1), with an optional short message; cheap to call
        often: the runner writes the latest report a few times a second at most."""
        if self.control is not None:
            self.control.report(fraction, message)

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job (`cancel JOB_ID`)."""
        return self.control is not None and self.control.cancel_requested

    def raise_if_cancelled(self) -> None:
        """Stop here if a cancel was requested: the job ends `cancelled`, without a retry."""
        if self.cancel_requested:
            raise JobCancelled("cancelled on request")
