"""Where a job is, from the queue backend and the ledger: `Producer.status()` and
`python -m worker status`.

One of: spooled, queued, deferred, in_progress (with the job's latest `progress`, if it
reports any), complete, failed, cancelled, dead (failed and kept in the dead letters for ops),
not_found, or unknown (Redis unreachable and nothing in Postgres).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from core.errors import BackendError
from worker.backend import JobState, QueueBackend
from worker.ledger import PG_DOWN_ERRORS, DeadLetter, InlineOutcome, Ledger, SpooledJob

__all__ = ["job_status"]

log = structlog.get_logger(__name__)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


# The error type of a job cancelled on request (its result, or its inline outcome).
_CANCELLED = "JobCancelled"


def _failed_or_cancelled(error: Any) -> str:
    return "cancelled" if isinstance(error, dict) and error.get("type") == _CANCELLED else "failed"


async def job_status(
    backend: QueueBackend, ledger: Ledger | None, job_id: str, queues: Mapping[str, str]
) -> dict[str, Any]:
    """`queues`: the Redis key of each queue the job may be in -> the queue's name."""
    spooled, dead, inline = await _ledger_rows(ledger, job_id) if ledger is not None else (None, None, None)
    if spooled is not None:
        return {
            "job_id": job_id,
            "status": "spooled",
            "job": spooled.name,
            "run_at": spooled.run_at.isoformat(),
        }
    report: dict[str, Any] = {"job_id": job_id, "status": "unknown"}
    if backend.usable:
        try:
            report = await _backend_status(backend, job_id, queues)
        except BackendError as exc:
            log.warning(
                "could not read job status from Redis", job_id=job_id, error=f"{type(exc).__name__}: {exc}"
            )
    if report["status"] in ("failed", "not_found", "unknown") and dead is not None:
        return {
            **report,
            "status": "dead",
            "job": dead.name,
            "mode": dead.mode,
            "tries": dead.tries,
            "failed_at": dead.failed_at.isoformat(),
            "error": dead.error,
        }
    if report["status"] in ("not_found", "unknown") and inline is not None:
        outcome = {"result": inline.result} if inline.success else {"error": inline.error}
        return {
            "job_id": job_id,
            "status": "complete" if inline.success else _failed_or_cancelled(inline.error),
            "job": inline.name,
            "mode": "inline",
            "tries": inline.tries,
            "finished_at": inline.finished_at.isoformat(),
            **outcome,
        }
    return report


async def _ledger_rows(
    ledger: Ledger, job_id: str
) -> tuple[SpooledJob | None, DeadLetter | None, InlineOutcome | None]:
    try:
        return (
            await ledger.spooled(job_id),
            await ledger.dead_letter_of(job_id),
            await ledger.inline_outcome(job_id),
        )
    except PG_DOWN_ERRORS:
        return None, None, None


async def _backend_status(backend: QueueBackend, job_id: str, queues: Mapping[str, str]) -> dict[str, Any]:
    view = await backend.job(list(queues), job_id)
    report: dict[str, Any] = {"job_id": job_id, "status": view.state.value}
    if view.result is not None:
        result = view.result
        report.update(
            job=result.name,
            mode="queued",
            tries=result.job_try,
            enqueued_at=_iso(result.enqueue_ms),
            started_at=_iso(result.start_ms),
            finished_at=_iso(result.finish_ms),
        )
        if result.success:
            report["result"] = result.value
        else:
            report["error"] = result.error
            report["status"] = _failed_or_cancelled(result.error)
    elif view.state is not JobState.NOT_FOUND and view.record is not None:
        report.update(job=view.record.name, enqueued_at=_iso(view.record.enqueue_ms))
        if view.score_ms:
            report["scheduled_for_ms"] = view.score_ms
    if view.state is not JobState.NOT_FOUND:
        report["queue"] = queues.get(view.queue, view.queue)
    if view.progress is not None:
        report["progress"] = view.progress
    if view.problem is not None:
        report["problem"] = view.problem
    return report
