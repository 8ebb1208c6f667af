"""`python -m worker stats`: the live workers (each process of a `run --processes N` group on a
line of its own), queue depths, jobs in progress, and recent throughput per job from every live
worker's snapshot (see `worker.engine.snapshots`).

Snapshots are read from Redis, which others may write: one that is not what a worker of ours
writes is counted as malformed and left out, and every name printed to a terminal has its
control characters escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from worker.backend import QueueBackend
from worker.telemetry.recent import summarize_snapshots

__all__ = ["collect_stats", "printable", "readable_snapshot", "render_stats"]


def printable(text: Any, limit: int = 60) -> str:
    """`text` safe for a terminal: control characters escaped, long text cut."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12


def readable_snapshot(snapshot: Any) -> bool:
    """Whether a snapshot has the shape our workers write (and numbers that add up)."""
    if not isinstance(snapshot, dict):
        return False
    if not all(isinstance(snapshot.get(k), str) for k in ("worker", "host", "queue")):
        return False
    if not _count(snapshot.get("pid")) or not _count(snapshot.get("running")):
        return False
    minutes = snapshot.get("minutes")
    if not isinstance(minutes, dict):
        return False
    for minute, jobs in minutes.items():
        if not minute.isdigit() or not isinstance(jobs, dict):
            return False
        for outcomes in jobs.values():
            if not isinstance(outcomes, dict) or not all(_count(n) for n in outcomes.values()):
                return False
    return True


async def collect_stats(
    backend: QueueBackend, queue: str, queues: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Queue depths, in-progress count and per-job throughput from every reporting worker.

    `queue` is the deployment's QUEUE_NAME (the `default` queue, reported at the top level as
    before); `queues` (Redis key -> name) adds a row per named queue, paused ones marked."""
    counts = await backend.counts(queue)
    named = dict(queues or {queue: "default"})
    rows = []
    paused = await backend.paused(list(named))
    for key, name in named.items():
        row = counts if key == queue else await backend.counts(key)
        rows.append(
            {
                "name": name,
                "key": key,
                "due": row.queued,
                "deferred": row.deferred,
                "in_progress": row.in_progress,
                "paused": key in paused,
            }
        )
    snapshots, malformed = [], 0
    for raw in await backend.worker_snapshots():
        try:
            snapshot = orjson.loads(raw)
        except orjson.JSONDecodeError:
            malformed += 1
            continue
        if not readable_snapshot(snapshot):
            malformed += 1
        # Workers of other deployments share the snapshot index; count only those of ours.
        elif snapshot["queue"] == queue or set(_keys(snapshot)) & set(named):
            snapshots.append(snapshot)
    return {
        "queue": queue,
        "due": counts.queued,
        "deferred": counts.deferred,
        "in_progress": counts.in_progress,
        "queues": rows,
        "workers": [
            {
                "worker": s["worker"],
                "host": s["host"],
                "pid": s["pid"],
                "running": s["running"],
                "queues": [named.get(k, k) for k in _keys(s)] or [named.get(s["queue"], s["queue"])],
                # Where it serves health, and which `--processes` group it is part of (None:
                # not reported, or a worker started on its own).
                **{k: s.get(k) if _count(s.get(k)) else None for k in ("http_port", "supervisor", "child")},
            }
            for s in snapshots
        ],
        "malformed_snapshots": malformed,
        "jobs": summarize_snapshots(snapshots),
    }


def _keys(snapshot: dict[str, Any]) -> list[str]:
    """The queues a worker's snapshot says it consumes (older workers name only one)."""
    found = snapshot.get("queues")
    return [k for k in found if isinstance(k, str)] if isinstance(found, list) else []


def _worker_order(worker: dict[str, Any]) -> tuple[str, int, int, int]:
    """Workers by host, then the processes of one group together, in child order."""
    group = worker.get("supervisor") or 0
    return (str(worker["host"]), group, worker.get("child") or 0, worker["pid"])


def render_stats(report: dict[str, Any]) -> str:
    """The `stats` report as a terminal table."""
    lines = [f"workers reporting: {len(report['workers'])}", ""]
    if report["workers"]:
        lines.append(f"{'host':<20}{'pid':>8}{'group':>14}{'health':>8}{'running':>9}  queues")
        for worker in sorted(report["workers"], key=_worker_order):
            group = f"{worker['supervisor']}/{worker['child']}" if worker.get("supervisor") else "-"
            health = worker.get("http_port") or "-"
            queues = printable(",".join(map(str, worker["queues"])), 40)
            lines.append(
                f"{printable(worker['host'], 20):<20}{worker['pid']:>8}{group:>14}{health:>8}"
                f"{worker['running']:>9}  {queues}"
            )
        lines.append("")
    lines.append(f"{'queue':<16}{'due':>9}{'deferred':>10}{'running':>9}  state")
    for row in report.get("queues") or []:
        state = "paused" if row["paused"] else "active"
        counts = f"{row['due']:>9}{row['deferred']:>10}{row['in_progress']:>9}"
        lines.append(f"{printable(row['name'], 16):<16}{counts}  {state}")
    if report.get("malformed_snapshots"):
        lines.append(f"malformed: {report['malformed_snapshots']} worker snapshot(s) in Redis are not ours")
    lines += [
        "",
        f"{'job':<24}{'/min 1m':>9}{'/min 5m':>9}{'/min 15m':>10}{'done 15m':>10}{'failed':>8}{'retries':>9}"
        f"{'fail %':>8}",
    ]
    for job, row in report["jobs"].items():
        lines.append(
            f"{printable(job, 24):<24}{row['per_min_1']:>9.1f}{row['per_min_5']:>9.1f}"
            f"{row['per_min_15']:>10.1f}{row['complete'] + row['failed']:>10}{row['failed']:>8}"
            f"{row['retry']:>9}{row['failure_rate'] * 100:>7.1f}%"
        )
    if not report["jobs"]:
        lines.append("(no jobs finished in the last 15 minutes)")
    return "\n".join(lines)
