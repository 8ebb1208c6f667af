"""Recent throughput per job, published by each worker and read by `python -m worker stats`.

Each worker keeps per-minute counts of finished attempts for the last 15 minutes and writes a
snapshot to `mb:stats:worker:<id>` (one SET with an expiry) every 10 s while jobs run and every
5 minutes when idle, so watching costs an idle worker a few hundred Redis commands a day.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import defaultdict
from typing import Any

import orjson

from worker import keys
from worker.redis_link import REDIS_ERRORS, RedisLink

__all__ = [
    "RecentCounts",
    "collect_stats",
    "publish_forever",
    "publish_once",
    "render_stats",
    "snapshot_key",
    "summarize_snapshots",
]

WINDOW_MINUTES = 15
PUBLISH_BUSY_S = 10.0
PUBLISH_IDLE_S = 300.0
SNAPSHOT_TTL_MS = 600_000


def snapshot_key(worker_id: str) -> str:
    return keys.worker_stats_key(worker_id)


class RecentCounts:
    """Per-job, per-minute counts of finished attempts by outcome."""

    def __init__(self) -> None:
        # minute -> job -> outcome -> count
        self._minutes: dict[int, dict[str, dict[str, int]]] = {}
        self.changed = False
        self.running = 0

    def add(self, job: str, outcome: str) -> None:
        minute = int(time.time() // 60)
        per_job = self._minutes.setdefault(minute, {})
        per_outcome = per_job.setdefault(job, {})
        per_outcome[outcome] = per_outcome.get(outcome, 0) + 1
        self.changed = True
        for old in [m for m in self._minutes if m <= minute - WINDOW_MINUTES]:
            del self._minutes[old]

    def snapshot(self, worker_id: str, queue: str) -> bytes:
        self.changed = False
        return orjson.dumps(
            {
                "worker": worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queue": queue,
                "at": time.time(),
                "running": self.running,
                "minutes": {str(m): jobs for m, jobs in self._minutes.items()},
            }
        )


def summarize_snapshots(snapshots: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """Throughput (per minute) over the last 1, 5 and 15 minutes and failure rate, per job."""
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
            if age < 0 or age >= WINDOW_MINUTES:
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


async def publish_forever(link: RedisLink, counts: RecentCounts, worker_id: str, queue: str) -> None:
    """Write this worker's snapshot: every 10 s while busy, every 5 min when idle."""
    last = 0.0
    while True:
        await asyncio.sleep(1.0)
        since = time.monotonic() - last
        if not link.usable or not ((counts.changed and since >= PUBLISH_BUSY_S) or since >= PUBLISH_IDLE_S):
            continue
        try:
            await publish_once(link, counts, worker_id, queue)
            last = time.monotonic()
        except REDIS_ERRORS:
            continue  # the poll loop reports outages; stats just wait for the next round


async def publish_once(link: RedisLink, counts: RecentCounts, worker_id: str, queue: str) -> None:
    await link.redis.set(snapshot_key(worker_id), counts.snapshot(worker_id, queue), px=SNAPSHOT_TTL_MS)


async def collect_stats(link: RedisLink, queue: str) -> dict[str, Any]:
    """Queue depths, in-progress count and per-job throughput from every reporting worker."""
    redis = link.redis
    now_ms = int(time.time() * 1000)
    total = int(await redis.zcard(queue))
    due = int(await redis.zcount(queue, "-inf", now_ms))
    snapshot_keys = [k async for k in redis.scan_iter(match=keys.WORKER_STATS_PATTERN, count=1000)]
    raw = await redis.mget(snapshot_keys) if snapshot_keys else []
    # Workers of other queues share the key space; count only this queue's.
    snapshots = [s for s in (orjson.loads(r) for r in raw if r) if s.get("queue") == queue]
    return {
        "queue": queue,
        "due": due,
        "deferred": total - due,
        # Lock keys do not name their queue, so the reporting workers' own counts are used.
        "in_progress": sum(int(s.get("running", 0)) for s in snapshots),
        "workers": [
            {"worker": s["worker"], "host": s["host"], "pid": s["pid"], "running": s["running"]}
            for s in snapshots
        ],
        "jobs": summarize_snapshots(snapshots),
    }
