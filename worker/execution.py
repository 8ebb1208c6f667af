"""One claimed job, start to finish: check its record, run it through `JobRunner.attempt`, and
say what to write back (a result record in arq's format, or a new start time for a retry).

Records that are not our JSON (a forged pickle, say) fail with a `DeserializationError` and are
never executed; so do expired jobs, unknown job names and jobs past their tries (a worker died
under them too often).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from jobs.registry import JobDefinition, Registry
from worker.errors import JobFailed, UnknownJobError
from worker.queue_store import ClaimedJob, Finished, epoch_ms
from worker.runner import JobRunner
from worker.serializer import deserialize, serialize

__all__ = ["Execution", "Outcome"]

log = structlog.get_logger("worker.engine")


@dataclass(frozen=True, slots=True)
class Outcome:
    finished: Finished
    label: str  # complete, failed or retry


class _Refused(Exception):
    """The job cannot be run at all; carries the error to store."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class Execution:
    """Runs claimed jobs for one queue; shared by every job task of a worker."""

    def __init__(self, runner: JobRunner, registry: Registry, queue: str) -> None:
        self._runner = runner
        self._registry = registry
        self._queue = queue

    async def run(self, job: ClaimedJob) -> Outcome:
        start_ms = epoch_ms()
        record: dict[str, Any] = {}
        try:
            record = self._decode(job)
            definition = self._definition(record)
            job_try = max(job.job_try, int(record.get("t") or 0))
            self._check_tries(definition, job_try)
        except _Refused as refused:
            return await self._refused(job, record, refused, start_ms)
        attempt = await self._runner.attempt(
            definition,
            job_id=job.job_id,
            payload=record["k"],
            job_try=job_try,
            mode="queued",
            enqueue_time=datetime.fromtimestamp(record["et"] / 1000, UTC),
        )
        if attempt.outcome == "retry":
            again = epoch_ms() + int((attempt.retry_in or 0) * 1000)
            return Outcome(Finished(job.job_id, run_again_at_ms=again), "retry")
        success = attempt.error is None
        value = attempt.result if success else attempt.error
        result = self._result(job, record, job_try, success, value, start_ms)
        return Outcome(Finished(job.job_id, result=result), "complete" if success else "failed")

    def _decode(self, job: ClaimedJob) -> dict[str, Any]:
        if job.record is None:
            raise _Refused("JobExecutionFailed", "job expired")
        try:
            record = deserialize(job.record)
        except ValueError as exc:
            raise _Refused("DeserializationError", f"unable to deserialize job: {exc}") from None
        if not isinstance(record.get("f"), str) or not isinstance(record.get("k"), dict):
            raise _Refused("DeserializationError", "unable to deserialize job: not an arq job record")
        if record.get("a"):
            raise _Refused("JobExecutionFailed", "jobs take keyword arguments only")
        enqueued = record.get("et")
        if not isinstance(enqueued, int | float) or not 0 <= enqueued < 1e14:  # ms; year 5138
            record["et"] = epoch_ms()
        return record

    def _definition(self, record: dict[str, Any]) -> JobDefinition[Any, Any]:
        try:
            return self._registry.get(record["f"])
        except UnknownJobError:
            raise _Refused("JobExecutionFailed", f"function {record['f']!r} not found") from None

    def _check_tries(self, definition: JobDefinition[Any, Any], job_try: int) -> None:
        max_tries = self._runner.max_tries_for(definition)
        if job_try > max_tries:
            raise _Refused("JobExecutionFailed", f"max {max_tries} tries exceeded")

    async def _refused(
        self, job: ClaimedJob, record: dict[str, Any], refused: _Refused, start_ms: int
    ) -> Outcome:
        name = str(record["f"]) if isinstance(record.get("f"), str) else "<unknown>"
        log.error(
            "job finished",
            job_id=job.job_id,
            job=name,
            outcome="failed",
            mode="queued",
            job_try=job.job_try,
            error_type=refused.error_type,
            error=refused.message,
            kind="permanent",
        )
        error = JobFailed(job.job_id, refused.error_type, refused.message, "permanent")
        kwargs = record.get("k")
        await self._runner.journal.dead_letter(
            job_id=job.job_id,
            name=name,
            payload=kwargs if isinstance(kwargs, dict) else {},
            error=error.to_dict(),
            tries=job.job_try,
            mode="queued",
            enqueue_time=None,
        )
        result = self._result(job, record, job.job_try, False, error, start_ms)
        return Outcome(Finished(job.job_id, result=result), "failed")

    def _result(
        self,
        job: ClaimedJob,
        record: dict[str, Any],
        job_try: int,
        success: bool,
        value: Any,
        start_ms: int,
    ) -> bytes:
        """arq's result record (so arq's `Job.result_info` reads it), as JSON."""
        kwargs = record.get("k")
        return serialize(
            {
                "t": job_try,
                "f": record.get("f", "<unknown>"),
                "a": [],
                "k": kwargs if isinstance(kwargs, dict) else {},
                "et": record.get("et", start_ms),
                "s": success,
                "r": value,
                "st": start_ms,
                "ft": epoch_ms(),
                "q": self._queue,
                "id": job.job_id,
            }
        )
