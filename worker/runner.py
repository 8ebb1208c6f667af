"""The single execution path for a job attempt, used by the arq worker and the inline runner.

One attempt: load the JSON payload into typed arguments, run the coroutine under the job's
timeout, JSON round-trip the result, classify a failure as retry or fail, and log one line.
The worker turns a retry into arq's `Retry`; the inline runner sleeps and tries again. Both
see the same limits, backoff, log events and error shape, so a job cannot tell them apart
except by reading `ctx.mode`.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
from pydantic import BaseModel

from jobs.context import JobContext, Mode
from jobs.deps import Deps
from jobs.registry import JobDefinition
from settings import Settings
from worker.errors import JobFailed, JobTimeout, PermanentError, TransientError, classify
from worker.journal import Journal
from worker.metrics import Metrics

__all__ = ["Attempt", "JobRunner", "backoff_delay"]

log = structlog.get_logger("worker.job")

Outcome = Literal["complete", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    result: Any = None
    error: JobFailed | None = None
    retry_in: float | None = None


def backoff_delay(job_try: int, settings: Settings, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter; a provider's Retry-After wins when it is longer."""
    ceiling = min(settings.retry_backoff_max, settings.retry_backoff_base * 2 ** (job_try - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_backoff_max))
    return float(delay)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _result_to_json(value: Any) -> Any:
    """The result as the caller will read it back; a result JSON cannot carry is a permanent error."""
    try:
        return orjson.loads(orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS))
    except TypeError as exc:
        raise PermanentError(f"the job's result is not JSON-serializable: {exc}") from None


class JobRunner:
    """Runs job attempts with shared dependencies; one per worker process or producer."""

    def __init__(self, settings: Settings, deps: Deps, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.deps = deps
        self.metrics = metrics or Metrics()
        self.journal = Journal(deps)

    def timeout_for(self, job: JobDefinition[Any, Any]) -> float:
        return job.timeout if job.timeout is not None else self.settings.job_timeout

    def max_tries_for(self, job: JobDefinition[Any, Any]) -> int:
        return job.max_tries if job.max_tries is not None else self.settings.job_max_tries

    async def attempt(
        self,
        job: JobDefinition[Any, Any],
        *,
        job_id: str,
        payload: dict[str, Any],
        job_try: int,
        mode: Mode,
        enqueue_time: datetime | None = None,
    ) -> Attempt:
        max_tries = self.max_tries_for(job)
        timeout = self.timeout_for(job)
        bound = structlog.contextvars.bind_contextvars(
            job_id=job_id, job=job.name, mode=mode, job_try=job_try
        )
        job_log = log.bind()
        ctx = JobContext(
            job_id=job_id,
            job_name=job.name,
            job_try=job_try,
            max_tries=max_tries,
            mode=mode,
            enqueue_time=enqueue_time or datetime.now(UTC),
            deps=self.deps,
            log=job_log,
        )
        started = time.perf_counter()
        self.metrics.attempt_started(job.name, mode)
        outcome = "cancelled"
        try:
            attempt = await self._attempt(job, ctx, payload, timeout, started)
            outcome = attempt.outcome
            if mode == "queued" and outcome != "retry":
                await self._journal_queued(job, ctx, payload, attempt)
            return attempt
        finally:
            self.metrics.attempt_finished(job.name, mode, outcome, time.perf_counter() - started)
            structlog.contextvars.reset_contextvars(**bound)

    async def _journal_queued(
        self, job: JobDefinition[Any, Any], ctx: JobContext, payload: dict[str, Any], attempt: Attempt
    ) -> None:
        if attempt.error is not None:
            await self.journal.dead_letter(
                job_id=ctx.job_id, name=job.name, payload=payload, error=attempt.error.to_dict(),
                tries=ctx.job_try, mode="queued", enqueue_time=ctx.enqueue_time,
            )  # fmt: skip
        if job.durable:
            await self.journal.durable_done(ctx.job_id)

    def _journal_inline(
        self, job: JobDefinition[Any, Any], job_id: str, payload: dict[str, Any], attempt: Attempt, tries: int
    ) -> None:
        error = attempt.error.to_dict() if attempt.error is not None else None
        self.journal.in_background(
            self.journal.inline_outcome(
                job_id=job_id, name=job.name, result=attempt.result, error=error, tries=tries
            )
        )
        if error is not None:
            self.journal.in_background(
                self.journal.dead_letter(
                    job_id=job_id,
                    name=job.name,
                    payload=payload,
                    error=error,
                    tries=tries,
                    mode="inline",
                    enqueue_time=None,
                )
            )

    async def _attempt(
        self,
        job: JobDefinition[Any, Any],
        ctx: JobContext,
        payload: dict[str, Any],
        timeout: float,
        started: float,
    ) -> Attempt:
        def finished(outcome: str, level: str = "info", **extra: Any) -> None:
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            fields = {"outcome": outcome, "duration_ms": duration_ms, **extra}
            # What the job reported (e.g. token usage); the runner's own fields win a clash.
            reported = {k: v for k, v in ctx.report.items() if k not in fields and k != "event"}
            getattr(log, level)("job finished", **reported, **fields)

        deadline = asyncio.timeout(timeout)
        try:
            if job.precheck is not None and (problem := job.precheck(self.settings)):
                # The worker may run with other settings than the producer that checked.
                raise PermanentError(problem)
            kwargs = job.load(payload)
            async with deadline:
                raw_result = await job.func(ctx, **kwargs)
            result = _result_to_json(raw_result)
        except asyncio.CancelledError:
            finished("cancelled", "warning")
            raise
        except Exception as exc:
            error: Exception = exc
            if isinstance(exc, TimeoutError) and deadline.expired():
                error = JobTimeout(f"job ran longer than its {timeout:g}s timeout")
            kind = classify(error)
            error_type = type(error).__name__
            message = str(error) or error_type
            if kind == "transient" and ctx.job_try < ctx.max_tries:
                retry_after = error.retry_after if isinstance(error, TransientError) else None
                delay = backoff_delay(ctx.job_try, self.settings, retry_after)
                finished("retry", "warning", error_type=error_type, error=message, retry_in_s=round(delay, 3))
                return Attempt("retry", retry_in=delay)
            exhausted = kind == "transient"
            finished(
                "failed",
                "error",
                error_type=error_type,
                error=message,
                kind=kind,
                retries_exhausted=exhausted,
            )
            return Attempt("failed", error=JobFailed(ctx.job_id, error_type, message, kind))
        finished("complete")
        return Attempt("complete", result=result)

    async def run_inline(
        self, job: JobDefinition[Any, Any], *, job_id: str, payload: dict[str, Any], mode: Mode = "inline"
    ) -> Any:
        """Run every try here and now; return the result or raise `JobFailed`."""
        enqueue_time = datetime.now(UTC)
        job_try = 1
        while True:
            attempt = await self.attempt(
                job, job_id=job_id, payload=payload, job_try=job_try, mode=mode, enqueue_time=enqueue_time
            )
            if attempt.outcome != "retry":
                self._journal_inline(job, job_id, payload, attempt, job_try)
            if attempt.outcome == "complete":
                return attempt.result
            if attempt.error is not None:
                raise attempt.error
            await asyncio.sleep(attempt.retry_in or 0)
            job_try += 1
