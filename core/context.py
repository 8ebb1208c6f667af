"""What a running job receives as its first argument, the same in queued and inline mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from core.deps import Deps

__all__ = ["JobContext", "Mode"]

Mode = Literal["queued", "inline"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """One attempt's context. Fields a job puts in `report` join that attempt's `job finished` line."""

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

    @property
    def start_number(self) -> int:
        return self.attempt or self.job_try
