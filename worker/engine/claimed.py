"""One claimed job, start to finish: decode its record, run it through the attempt path, and
say what to write back (a result record in arq's format, or a new start time for a retry).

A record that is not ours (a forged pickle, say), an expired job, an unknown job name and a job
past its tries (a worker died under it too often) are never executed: they are refused through
the same outcome path as a failed attempt (one log line, the counters, a dead letter) and get a
failed result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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
from core.errors import JobFailed, UnknownJobError
from core.registry import JobDefinition, Registry
from worker.backend import ClaimedJob, Finished
from worker.execution import AttemptRunner

__all__ = ["ClaimedJobs"]


class _Refused(Exception):
    """The job cannot be run at all; carries the error to store."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class ClaimedJobs:
    """Runs claimed jobs of one queue; shared by every job task of a worker."""

    def __init__(self, attempts: AttemptRunner, registry: Registry, queue: str) -> None:
        self._attempts = attempts
        self._registry = registry
        self._queue = queue

    async def run(self, job: ClaimedJob) -> Finished:
        start_ms, started = epoch_ms(), time.perf_counter()
        record: JobRecord | None = None
        try:
            record = self._decode(job)
            definition = self._definition(record)
            job_try = max(job.job_try, record.job_try or 0)
            self._check_tries(definition, job_try)
        except _Refused as refused:
            return await self._refused(job, record, refused, start_ms, time.perf_counter() - started)
        attempt = await self._attempts.attempt(
            definition,
            job_id=job.job_id,
            kwargs=record.kwargs,
            job_try=job_try,
            mode="queued",
            enqueue_time=datetime.fromtimestamp(record.enqueue_ms / 1000, UTC),
            traceparent=record.traceparent,
        )
        if attempt.outcome == "retry":
            again = epoch_ms() + int((attempt.retry_in or 0) * 1000)
            return Finished(job.job_id, run_again_at_ms=again)
        if attempt.outcome == "complete":
            result = self._result(job.job_id, record, job_try, True, attempt.result, start_ms)
            return Finished(job.job_id, result=result)
        error = attempt.error or JobFailed(job.job_id, "Error", "the job failed", "permanent")
        result = self._result(job.job_id, record, job_try, False, failure_value(error), start_ms)
        return Finished(job.job_id, result=result)

    def _decode(self, job: ClaimedJob) -> JobRecord:
        if job.record is None:
            raise _Refused("JobExecutionFailed", "job expired")
        try:
            return decode_job(job.record)
        except CodecError as exc:
            message = str(exc)
            if message == PICKLED_JOB:
                message += (
                    f"; separate the queues (this one is {self._queue!r}, arq's default is 'arq:queue'): "
                    "give the runner its own with QUEUE_NAME, or the arq producer its own with "
                    "create_pool(..., default_queue_name=...)"
                )
            raise _Refused(exc.error_type, message) from None

    def _definition(self, record: JobRecord) -> JobDefinition[Any, Any]:
        try:
            return self._registry.get(record.name)
        except UnknownJobError:
            raise _Refused("JobExecutionFailed", f"function {record.name!r} not found") from None

    def _check_tries(self, definition: JobDefinition[Any, Any], job_try: int) -> None:
        max_tries = self._attempts.max_tries_for(definition)
        if job_try > max_tries:
            raise _Refused("JobExecutionFailed", f"max {max_tries} tries exceeded")

    async def _refused(
        self, job: ClaimedJob, record: JobRecord | None, refused: _Refused, start_ms: int, duration_s: float
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
        )
        result = self._result(job.job_id, record, job.job_try, False, failure_value(error), start_ms)
        return Finished(job.job_id, result=result)

    def _result(
        self, job_id: str, record: JobRecord | None, job_try: int, success: bool, value: Any, start_ms: int
    ) -> bytes:
        return encode_result(
            ResultRecord(
                job_id=job_id,
                name=record.name if record is not None else "<unknown>",
                kwargs=record.kwargs if record is not None else {},
                job_try=job_try,
                success=success,
                value=value,
                enqueue_ms=record.enqueue_ms if record is not None else start_ms,
                start_ms=start_ms,
                finish_ms=epoch_ms(),
                queue=self._queue,
                traceparent=record.traceparent if record is not None else None,
            )
        )
