"""The one place where the end of an attempt is accounted for, whatever ran it.

Every finished attempt, queued or inline, run or refused before it could run (an undecodable
record, an unknown job, tries used up), comes through `Outcomes.finished` exactly once (its
synchronous part, `account`, on the hot path; `record` only when the ledger has work):

- one `job finished` log line with `job_id`, `job`, `mode`, `job_try`, `outcome`, `duration_ms`
  (and the error on failure, and what the job put in `ctx.report`);
- the Prometheus counters and histogram, the recent counts `stats` shows, and the totals the
  worker's health key carries;
- the ledger: a failure for good is dead-lettered; an inline run's final outcome is kept for
  `status`; a durable job's row is settled;
- with SENTRY_DSN, a failure for good (and with SENTRY_REPORT_RETRIES every failed try) is
  reported to Sentry, once (`worker.telemetry.errors_report`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from core.context import Mode
from core.errors import JobFailed
from worker.ledger import Ledger
from worker.telemetry import joblines
from worker.telemetry.errors_report import ErrorReports
from worker.telemetry.metrics import Metrics

__all__ = ["AttemptEnd", "Outcome", "Outcomes", "line_fields"]

log = structlog.get_logger(__name__)

# `interrupted`: stopped at shutdown past the grace (it runs again); `cancelled`: the job gave up
# on a cancel request (`ctx.raise_if_cancelled()`).
Outcome = Literal["complete", "retry", "failed", "cancelled", "interrupted"]
_LEVELS: dict[str, int] = {
    "complete": logging.INFO,
    "retry": logging.WARNING,
    "failed": logging.ERROR,
    "cancelled": logging.WARNING,
    "interrupted": logging.WARNING,
}


@dataclass(slots=True)  # not frozen: made per job, and frozen init costs ~0.3 µs a field
class AttemptEnd:
    """What happened to one attempt, with what the ledger needs to record it."""

    job: str
    job_id: str
    mode: Mode
    job_try: int
    outcome: Outcome
    duration_s: float
    kwargs: Mapping[str, Any]
    result: Any = None
    error: JobFailed | None = None
    retry_in: float | None = None
    retries_exhausted: bool = False
    enqueue_time: datetime | None = None
    durable: bool = False
    # False for an attempt refused before the job ran (it was never counted as running).
    started: bool = True
    reported: Mapping[str, Any] = field(default_factory=dict)
    # For traces and error reports: the queue's key, the attempt's trace and span (its own span
    # when tracing, else the enqueuer's from the record), and what the job raised.
    queue: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    exception: BaseException | None = None
    # How many logging context variables the attempt bound; the log line holds all of them.
    context_bound: int = 0


def line_fields(end: AttemptEnd) -> dict[str, Any]:
    """The `job finished` line's own fields (the logging context comes first, `event`, `level`,
    `logger` and `timestamp` last). Called as the loop turn that logged the line ends."""
    fields: dict[str, Any] = {
        "job_id": end.job_id,
        "job": end.job,
        "mode": end.mode,
        "job_try": end.job_try,
        "outcome": end.outcome,
        "duration_ms": round(end.duration_s * 100_000) / 100,  # round(x, 2) costs 5 times more
    }
    if end.reported:  # what the job reported (e.g. token usage); the runner's fields win a clash
        fields = {**{k: v for k, v in end.reported.items() if k not in joblines.TAIL_KEYS}, **fields}
    if end.error is not None:
        fields.update(error_type=end.error.error_type, error=end.error.message)
        if end.outcome == "failed":
            fields.update(kind=end.error.kind, retries_exhausted=end.retries_exhausted)
    if end.retry_in is not None:
        fields["retry_in_s"] = round(end.retry_in, 3)
    if end.trace_id is not None:
        fields.update(trace_id=end.trace_id, span_id=end.span_id)
    return fields


class Outcomes:
    """Counts, logs and records finished attempts for one process."""

    def __init__(self, metrics: Metrics, ledger: Ledger, *, errors: ErrorReports | None = None) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.errors = errors

    def started(self, job: str, mode: Mode) -> None:
        self.metrics.attempt_started(job, mode)

    async def finished(self, end: AttemptEnd) -> None:
        self.account(end)
        if self.needs_record(end):
            await self.record(end)

    def account(self, end: AttemptEnd) -> None:
        """The log line and the counters."""
        self._log(end)
        self.metrics.attempt_finished(end.job, end.mode, end.outcome, end.duration_s, started=end.started)
        if self.errors is not None and end.error is not None and self.errors.wants(end.outcome):
            self.errors.attempt_failed(end)

    @staticmethod
    def needs_record(end: AttemptEnd) -> bool:
        """Whether the ledger records this end: an inline run's final outcome, a failure for
        good, a durable job's end. A queued success of a plain job needs nothing."""
        if end.outcome == "cancelled":
            return end.mode == "inline" or end.durable
        if end.outcome not in ("complete", "failed"):
            return False
        return end.mode == "inline" or end.error is not None or end.durable

    def _log(self, end: AttemptEnd) -> None:
        levelno = _LEVELS[end.outcome]
        if not joblines.write(levelno, line_fields, end, bound=end.context_bound):
            log.log(levelno, joblines.EVENT, **line_fields(end))

    async def record(self, end: AttemptEnd) -> None:
        error = end.error.to_dict() if end.error is not None else None
        if end.mode == "inline":
            # Inline runs sit in the caller's request: record without making it wait.
            self.ledger.in_background(
                self.ledger.inline_finished(
                    job_id=end.job_id,
                    name=end.job,
                    result=end.result,
                    error=error,
                    tries=end.job_try,
                    kwargs=dict(end.kwargs),
                    durable=end.durable,
                    dead_letter=end.outcome == "failed",
                )
            )
            return
        if error is not None and end.outcome == "failed":
            await self.ledger.dead_letter(
                job_id=end.job_id,
                name=end.job,
                kwargs=dict(end.kwargs),
                error=error,
                tries=end.job_try,
                mode=end.mode,
                enqueue_time=end.enqueue_time,
            )
        if end.durable:
            await self.ledger.durable_done(end.job_id)
