"""`python -m worker stats`: queue depths, jobs in progress, and recent throughput per job from
every live worker's snapshot (see `worker.engine.snapshots`)."""

from __future__ import annotations

from typing import Any

import orjson

from worker.backend import QueueBackend
from worker.telemetry.recent import summarize_snapshots

__all__ = ["collect_stats", "render_stats"]


async def collect_stats(backend: QueueBackend, queue: str) -> dict[str, Any]:
    """Queue depths, in-progress count and per-job throughput from every reporting worker."""
    counts = await backend.counts(queue)
    snapshots = []
    for raw in await backend.worker_snapshots():
        try:
            snapshot = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        # Workers of other queues share the snapshot index; count only this queue's.
        if isinstance(snapshot, dict) and snapshot.get("queue") == queue:
            snapshots.append(snapshot)
    return {
        "queue": queue,
        "due": counts.queued,
        "deferred": counts.deferred,
        "in_progress": counts.in_progress,
        "workers": [
            {
                "worker": s.get("worker"),
                "host": s.get("host"),
                "pid": s.get("pid"),
                "running": s.get("running"),
            }
            for s in snapshots
        ],
        "jobs": summarize_snapshots(snapshots),
    }


def render_stats(report: dict[str, Any]) -> str:
    """The `stats` report as a terminal table."""
    lines = [
        f"queue {report['queue']}: {report['due']} due, {report['deferred']} deferred, "
        f"{report['in_progress']} in progress; workers reporting: {len(report['workers'])}",
        "",
        f"{'job':<24}{'/min 1m':>9}{'/min 5m':>9}{'/min 15m':>10}{'done 15m':>10}{'failed':>8}{'retries':>9}"
        f"{'fail %':>8}",
    ]
    for job, row in report["jobs"].items():
        lines.append(
            f"{job:<24}{row['per_min_1']:>9.1f}{row['per_min_5']:>9.1f}{row['per_min_15']:>10.1f}"
            f"{row['complete'] + row['failed']:>10}{row['failed']:>8}{row['retry']:>9}"
            f"{row['failure_rate'] * 100:>7.1f}%"
        )
    if not report["jobs"]:
        lines.append("(no jobs finished in the last 15 minutes)")
    return "\n".join(lines)
