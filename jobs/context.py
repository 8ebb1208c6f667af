"""What a running job receives as its first argument, the same in queued and inline mode."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import structlog

from jobs.deps import Deps

__all__ = ["JobContext", "Mode"]

Mode = Literal["queued", "inline"]


@dataclass(frozen=True, slots=True)
class JobContext:
    job_id: str
    job_name: str
    job_try: int
    max_tries: int
    mode: Mode
    enqueue_time: datetime
    deps: Deps
    log: structlog.typing.FilteringBoundLogger
