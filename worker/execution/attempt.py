"""One attempt of a job, the same whoever runs it: the worker's engine or the inline executor.

Load the JSON arguments into typed keyword arguments, run the coroutine under the job's
timeout, JSON round-trip the result, classify a failure as retry or fail, and hand the end of
the attempt to `Outcomes`. The engine turns a retry into a new start time in the queue; the
inline executor sleeps and tries again. Both see the same limits, backoff, log line and error
shape, so a job cannot tell them apart except by reading `ctx.mode`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from core.codec import json_value
from core.context import JobContext, Mode
from core.control import JobControl
from core.deps import Deps
from core.errors import JobCancelled, JobFailed, PermanentError, TransientError, classify, scrub
from core.registry import JobDefinition
from settings import Settings
from worker.execution.deadlines import Deadlines
from worker.execution.outcomes import AttemptEnd, Outcomes
from worker.telemetry import joblines
from worker.telemetry.tracing import Tracing

__all__ = ["Attempt", "AttemptRunner", "backoff_delay"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Literal["complete", "retry", "failed", "cancelled"]
    result: Any = None
    error: JobFailed | None = None
    retry_in: float | None = None
    exception: Exception | None = None  # what the job raised, for traces and error reports


def backoff_delay(job_try: int, settings: Settings, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter; a provider's Retry-After wins when it is longer."""
    ceiling = min(settings.retry_backoff_max, settings.retry_backoff_base * 2 ** (job_try - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_backoff_max))
    return float(delay)


class AttemptRunner:
    """Runs job attempts with shared dependencies; one per process (worker or producer)."""

    def __init__(
        self, settings: Settings, deps: Deps, outcomes: Outcomes, *, tracing: Tracing | None = None
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.outcomes = outcomes
        self.tracing = tracing  # None unless OTEL_* turns tracing on
        # Scrubbed from every error message before it is logged, stored or returned.
        self._secrets = settings.secret_values()
        self._deadlines = Deadlines()

    def timeout_for(self, job: JobDefinition[Any, Any]) -> float:
        return job.timeout if job.timeout is not None else self.settings.job_timeout

    def max_tries_for(self, job: JobDefinition[Any, Any]) -> int:
        return job.max_tries if job.max_tries is not None else self.settings.job_max_tries

    async def attempt(
        self,
        job: JobDefinition[Any, Any],
        *,
        job_id: str,
        kwargs: Mapping[str, Any],
        job_try: int,
        mode: Mode,
        enqueue_time: datetime | None = None,
        traceparent: str | None = None,
        start_number: int | None = None,
        control: JobControl | None = None,
        queue: str | None = None,
    ) -> Attempt:
        fields: dict[str, Any] = {"job_id": job_id, "job": job.name, "mode": mode, "job_try": job_try}
        span = None
        if self.tracing is not None:  # the attempt's span, a child of the enqueue's
            span = self.tracing.attempt(job.name, job_id, job_try, mode, queue, traceparent)
            fields["trace_id"], fields["span_id"] = span.trace_id, span.span_id
        elif traceparent is not None:  # every line of the job joins the request that enqueued it
            fields["trace_id"], fields["span_id"] = traceparent[3:35], traceparent[36:52]
        # Every key bound here is also among the `job finished` line's own fields (see
        # `joblines.write`'s `bound`): the line skips reading the context when it holds only these.
        bound = joblines.bind(fields)
        # The job may change its context (it is not frozen: one per attempt, and a frozen one costs
        # ~1.2 µs more to make); the runner reads none of it back but the report it fills.
        max_tries = self.max_tries_for(job)
        enqueued = enqueue_time or datetime.now(UTC)
        report: dict[str, Any] = {}
        ctx = JobContext(
            job_id=job_id,
            job_name=job.name,
            job_try=job_try,
            max_tries=max_tries,
            mode=mode,
            enqueue_time=enqueued,
            deps=self.deps,
            log=log,  # a lazy proxy: binds when the job first logs, not on every attempt
            report=report,
            traceparent=traceparent,
            attempt=start_number or job_try,
            control=control,
        )
        started = time.perf_counter()
        self.outcomes.started(job.name, mode)
        attempt: Attempt | None = None
        try:
            attempt = await self._run(job, ctx, kwargs, job_id=job_id, job_try=job_try, max_tries=max_tries)
            return attempt
        finally:
            end = AttemptEnd(
                job=job.name,
                job_id=job_id,
                mode=mode,
                job_try=job_try,
                outcome=attempt.outcome if attempt is not None else "interrupted",
                duration_s=time.perf_counter() - started,
                kwargs=kwargs,
                result=attempt.result if attempt is not None else None,
                error=attempt.error if attempt is not None else None,
                retry_in=attempt.retry_in if attempt is not None else None,
                retries_exhausted=attempt is not None
                and attempt.error is not None
                and attempt.error.kind == "transient",
                enqueue_time=enqueued,
                durable=job.durable,
                reported=report,
                queue=queue,
                trace_id=fields.get("trace_id"),
                span_id=fields.get("span_id"),
                exception=attempt.exception if attempt is not None else None,
                context_bound=len(bound),
            )
            try:
                try:
                    self.outcomes.account(end)
                finally:
                    if span is not None:  # before the ledger's write: the span times the job
                        span.end(end.outcome, end.error, end.exception)
                if self.outcomes.needs_record(end):
                    await self.outcomes.record(end)
            finally:
                joblines.unbind(bound)

    async def refuse(
        self,
        name: str,
        *,
        job_id: str,
        kwargs: Mapping[str, Any],
        job_try: int,
        mode: Mode,
        error_type: str,
        message: str,
        duration_s: float = 0.0,
        enqueue_time: datetime | None = None,
        queue: str | None = None,
        exception: Exception | None = None,
    ) -> JobFailed:
        """Account for an attempt that could not run at all (an undecodable record, an unknown
        job, tries used up): the same log line, counters and dead letter as a failed attempt."""
        error = JobFailed(job_id, error_type, message, "permanent")
        end = AttemptEnd(
            job=name,
            job_id=job_id,
            mode=mode,
            job_try=job_try,
            outcome="failed",
            duration_s=duration_s,
            kwargs=kwargs,
            error=error,
            enqueue_time=enqueue_time,
            started=False,
            queue=queue,
            exception=exception,
        )
        await self.outcomes.finished(end)
        return error

    async def _run(
        self,
        job: JobDefinition[Any, Any],
        ctx: JobContext,
        kwargs: Mapping[str, Any],
        *,
        job_id: str,
        job_try: int,
        max_tries: int,
    ) -> Attempt:
        try:
            if job.precheck is not None and (problem := job.precheck(self.settings)):
                # The worker may run with other settings than the producer that checked.
                raise PermanentError(problem)
            arguments = job.load(kwargs)
            raw_result = await self._deadlines.run(job.func(ctx, **arguments), self.timeout_for(job))
            result = json_value(raw_result)
        except asyncio.CancelledError:
            raise
        except JobCancelled as exc:
            message = scrub(str(exc) or "cancelled on request", self._secrets)
            return Attempt("cancelled", error=JobFailed(job_id, "JobCancelled", message, "permanent"))
        except Exception as exc:
            kind = classify(exc)
            message = scrub(str(exc) or type(exc).__name__, self._secrets)
            failure = JobFailed(job_id, type(exc).__name__, message, kind)
            if kind == "transient" and job_try < max_tries:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                delay = backoff_delay(job_try, self.settings, retry_after)
                return Attempt("retry", error=failure, retry_in=delay, exception=exc)
            return Attempt("failed", error=failure, exception=exc)
        return Attempt("complete", result=result)
