"""One claimed job, start to finish: decode its record, run it through the attempt path, and
say what to write back (a result record in arq's format, or a new start time for a retry).

A record that is not ours (a forged pickle, a record too big or nested too deep), an expired
job, an unknown job name, a job past its tries and a job whose runs were interrupted too often
(its worker killed, or stopped mid-run) are never executed: they are refused, on first sight,
through the same outcome path as a failed attempt (one log line, the counters, a dead letter)
and get a failed result. So are queue entries the claim quarantined (an id or score no producer
of ours writes). Nothing read from Redis can make this raise in a loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from core.clock import epoch_ms
from core.codec import (
    PICKLED_JOB,
    CodecError,
    JobRecord,
    ResultRecord,
    decode_job,
    encode_result,
    failure_value,
)
from core.control import JobControl
from core.errors import JobFailed, UnknownJobError
from core.registry import JobDefinition, Registry
from worker.backend import ClaimedJob, Finished, PoisonEntry
from worker.execution import AttemptRunner
from worker.flow import RateLimits, SharedLimiter

__all__ = ["ClaimedJobs"]

log = structlog.get_logger(__name__)


class _Refused(Exception):
    """The job cannot be run at all; carries the error to store."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class ClaimedJobs:
    """Runs claimed jobs; shared by every job task of a worker. A job that spends a rate limit
    asks `limiter` for its turn first, and waits for it in its queue, not in a slot."""

    def __init__(
        self,
        attempts: AttemptRunner,
        registry: Registry,
        *,
        limits: RateLimits,
        limiter: SharedLimiter | None = None,
    ) -> None:
        self._attempts = attempts
        self._registry = registry
        self._limits = limits
        self._limiter = limiter

    async def run(self, job: ClaimedJob, control: JobControl | None = None) -> Finished:
        """The outcome to record; never raises for anything about the job or its record."""
        try:
            return await self._run(job, control)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A fault of ours (not the job's: the attempt path catches those). Recorded as a failure
            # with its reason, so it is not re-run at every lock expiry.
            log.error(
                "could not finish a job; recorded as failed",
                job_id=job.job_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            refused = _Refused(
                "InternalError", f"the worker could not finish the job: {type(exc).__name__}: {exc}"
            )
            return await self._refused(job, None, refused, epoch_ms(), 0.0, exception=exc)

    async def quarantined(self, entry: PoisonEntry) -> None:
        """A queue entry the claim set aside: one log line, the counters, a dead letter."""
        await self._attempts.refuse(
            "<quarantined>",
            job_id=entry.shown_id,
            kwargs={"raw_id_hex": entry.raw_id[:1024].hex(), "score": entry.score},
            job_try=1,
            mode="queued",
            error_type="PoisonEntry",
            message=f"queue entry set aside: {entry.reason}",
        )

    async def _run(self, job: ClaimedJob, control: JobControl | None) -> Finished:
        start_ms, started = epoch_ms(), time.perf_counter()
        record: JobRecord | None = None
        try:
            record = self._decode(job)
            definition = self._definition(record)
            job_try = max(job.job_try, record.job_try or 0)
            self._check_tries(definition, job_try, job.interruptions)
        except _Refused as refused:
            return await self._refused(job, record, refused, start_ms, time.perf_counter() - started)
        if self._limiter is not None and (costs := self._limits.costs(definition, record.kwargs)):
            turn = await self._limiter.turn(job.job_id, costs)
            if turn:  # not yet: back to its queue, due at the turn reserved for it
                self._attempts.outcomes.metrics.rate_limited(definition.name)
                return Finished(job.job_id, run_again_at_ms=turn, queue=job.queue, deferred=True)
        attempt = await self._attempts.attempt(
            definition,
            job_id=job.job_id,
            kwargs=record.kwargs,
            job_try=job_try,
            mode="queued",
            enqueue_time=datetime.fromtimestamp(record.enqueue_ms / 1000, UTC),
            traceparent=record.traceparent,
            start_number=job_try + job.interruptions,
            control=control,
            queue=job.queue,
        )
        if attempt.outcome == "retry":
            again = epoch_ms() + int((attempt.retry_in or 0) * 1000)
            return Finished(job.job_id, run_again_at_ms=again, queue=job.queue)
        if attempt.outcome == "complete":
            result = self._result(job, record, job_try, True, attempt.result, start_ms)
            return Finished(job.job_id, result=result, queue=job.queue)
        # Failed, or cancelled on request: a failed result says which.
        error = attempt.error or JobFailed(job.job_id, "Error", "the job failed", "permanent")
        result = self._result(job, record, job_try, False, failure_value(error), start_ms)
        return Finished(job.job_id, result=result, queue=job.queue)

    def _decode(self, job: ClaimedJob) -> JobRecord:
        if job.record is None:
            raise _Refused("JobExecutionFailed", "job expired")
        if job.untrusted is not None:
            raise _Refused("SignatureError", f"the job record is refused unread: {job.untrusted}")
        limit = self._attempts.settings.worker_max_record_bytes
        if len(job.record) > limit:
            raise _Refused(
                "DeserializationError",
                f"the job record is {len(job.record)} bytes, over the {limit}-byte limit "
                "(WORKER_MAX_RECORD_BYTES)",
            )
        try:
            return decode_job(job.record)
        except CodecError as exc:
            message = str(exc)
            if message == PICKLED_JOB:
                message += (
                    f"; separate the queues (this one is {job.queue!r}, arq's default is 'arq:queue'): "
                    "give the runner its own with QUEUE_NAME, or the arq producer its own with "
                    "create_pool(..., default_queue_name=...)"
                )
            raise _Refused(exc.error_type, message) from None

    def _definition(self, record: JobRecord) -> JobDefinition[Any, Any]:
        try:
            return self._registry.get(record.name)
        except UnknownJobError:
            raise _Refused("JobExecutionFailed", f"function {record.name!r} not found") from None

    def _check_tries(self, definition: JobDefinition[Any, Any], job_try: int, interruptions: int) -> None:
        max_tries = self._attempts.max_tries_for(definition)
        if job_try > max_tries:
            raise _Refused("JobExecutionFailed", f"max {max_tries} tries exceeded")
        budget = self._attempts.settings.worker_max_interruptions
        if interruptions > budget:
            raise _Refused(
                "JobExecutionFailed",
                f"its run was interrupted {interruptions} times (a worker killed, or stopped mid-run); "
                f"WORKER_MAX_INTERRUPTIONS={budget} ran out",
            )

    async def _refused(
        self,
        job: ClaimedJob,
        record: JobRecord | None,
        refused: _Refused,
        start_ms: int,
        duration_s: float,
        exception: Exception | None = None,
    ) -> Finished:
        name = record.name if record is not None else "<unknown>"
        kwargs: Mapping[str, Any] = record.kwargs if record is not None else {}
        error = await self._attempts.refuse(
            name,
            job_id=job.job_id,
            kwargs=kwargs,
            job_try=job.job_try,
            mode="queued",
            error_type=refused.error_type,
            message=refused.message,
            duration_s=duration_s,
            queue=job.queue,
            exception=exception,  # a fault of ours: its stack goes to the error report
        )
        result = self._result(job, record, job.job_try, False, failure_value(error), start_ms)
        return Finished(job.job_id, result=result, queue=job.queue)

    @staticmethod
    def _result(
        job: ClaimedJob, record: JobRecord | None, job_try: int, success: bool, value: Any, start_ms: int
    ) -> bytes:
        return encode_result(
            ResultRecord(
                job_id=job.job_id,
                name=record.name if record is not None else "<unknown>",
                kwargs=record.kwargs if record is not None else {},
                job_try=job_try,
                success=success,
                value=value,
                enqueue_ms=record.enqueue_ms if record is not None else start_ms,
                start_ms=start_ms,
                finish_ms=epoch_ms(),
                queue=job.queue,
                traceparent=record.traceparent if record is not None else None,
            )
        )
