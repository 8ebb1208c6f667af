"""Read a job's state from Redis for `python -m worker status` and for ops tooling."""

from __future__ import annotations

from typing import Any

from arq.jobs import Job, JobStatus

from worker.redis_link import RedisLink
from worker.serializer import deserialize, error_from_payload

__all__ = ["job_status"]


async def job_status(link: RedisLink, job_id: str, queue: str) -> dict[str, Any]:
    """One of queued, deferred, in_progress, complete, failed or not_found, with details."""
    job = Job(job_id, link.redis, _queue_name=queue, _deserializer=deserialize)
    status = await job.status()
    report: dict[str, Any] = {"job_id": job_id, "status": status.value}
    if status is JobStatus.complete:
        info = await job.result_info()
        if info is not None:
            error = error_from_payload(info.result)
            report.update(
                status="complete" if info.success else "failed",
                job=info.function,
                tries=info.job_try,
                enqueued_at=info.enqueue_time.isoformat(),
                started_at=info.start_time.isoformat(),
                finished_at=info.finish_time.isoformat(),
            )
            if info.success:
                report["result"] = info.result
            else:
                report["error"] = error or {"type": "Error", "message": str(info.result)}
    elif status is not JobStatus.not_found:
        definition = await job.info()
        if definition is not None:
            report.update(job=definition.function, enqueued_at=definition.enqueue_time.isoformat())
            if definition.score:
                report["scheduled_for_ms"] = definition.score
    return report
