"""Recent throughput per job: per-minute counts of finished attempts for the last hour.

Each worker keeps one and publishes a snapshot to the backend (see `worker.engine.snapshots`);
`python -m worker stats` sums the last 15 minutes of every live worker's snapshot, the ops
dashboard charts the hour.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import time
from collections import defaultdict
from typing import Any

import orjson

__all__ = ["STATS_MINUTES", "WINDOW_MINUTES", "RecentCounts", "summarize_snapshots"]

# Minutes kept in a snapshot (the dashboard's hour), and the span `stats` sums.
WINDOW_MINUTES = 60
STATS_MINUTES = 15


def _version() -> str:
    try:
        return importlib.metadata.version("maxbooster-jobs")
    except importlib.metadata.PackageNotFoundError:
        return "0"


_VERSION = _version()


class RecentCounts:
    """Per-job, per-minute counts of finished attempts by outcome."""

    def __init__(self) -> None:
        # minute -> job -> outcome -> count
        self._minutes: dict[int, dict[str, dict[str, int]]] = {}
        self.changed = False
        self.running = 0
        self.started = time.time()

    def add(self, job: str, outcome: str) -> None:
        minute = int(time.time() // 60)
        per_job = self._minutes.setdefault(minute, {})
        per_outcome = per_job.setdefault(job, {})
        per_outcome[outcome] = per_outcome.get(outcome, 0) + 1
        self.changed = True
        if len(self._minutes) > WINDOW_MINUTES:
            for old in [m for m in self._minutes if m <= minute - WINDOW_MINUTES]:
                del self._minutes[old]

    def snapshot(self, worker_id: str, queue: str, **extra: Any) -> bytes:
        self.changed = False
        return orjson.dumps(
            {
                "worker": worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queue": queue,
                "at": time.time(),
                "started": self.started,
                "version": _VERSION,
                "running": self.running,
                "minutes": {str(m): jobs for m, jobs in self._minutes.items()},
                **extra,
            }
        )


def summarize_snapshots(snapshots: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """Throughput (per minute) over the last 1, 5 and 15 minutes, and the last 15 minutes'
    counts and failure rate, per job."""
    now_minute = int((now or time.time()) // 60)
    per_job: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "complete": 0,
            "failed": 0,
            "retry": 0,
            "per_min_1": 0.0,
            "per_min_5": 0.0,
            "per_min_15": 0.0,
        }
    )
    for snap in snapshots:
        for minute_text, jobs in snap.get("minutes", {}).items():
            age = now_minute - int(minute_text)
            if age < 0 or age >= STATS_MINUTES:
                continue
            for job, outcomes in jobs.items():
                row = per_job[job]
                done = outcomes.get("complete", 0) + outcomes.get("failed", 0)
                for outcome in ("complete", "failed", "retry"):
                    row[outcome] += outcomes.get(outcome, 0)
                for span in (1, 5, 15):
                    if age < span:
                        row[f"per_min_{span}"] += done / span
    for row in per_job.values():
        finished = row["complete"] + row["failed"]
        row["failure_rate"] = round(row["failed"] / finished, 4) if finished else 0.0
    return dict(sorted(per_job.items()))
