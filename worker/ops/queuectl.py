"""`python -m worker queues | pause QUEUE | resume QUEUE | cancel JOB_ID`: the named queues
from the command line."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from settings import Settings
from worker.ops.stats import collect_stats, printable
from worker.producer import Producer

__all__ = ["cancel", "list_queues", "pause", "resume"]


def _print(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")


async def cancel(settings: Settings, job_id: str) -> int:
    async with Producer(settings) as producer:
        outcome = await producer.cancel(job_id)
    _print({"job_id": job_id, "outcome": outcome.value})
    return 1 if outcome.value == "not_found" else 0


async def pause(settings: Settings, name: str) -> int:
    async with Producer(settings) as producer:
        changed = await producer.pause_queue(name)
    _print({"queue": name, "paused": True, "was_paused": not changed})
    return 0


async def resume(settings: Settings, name: str) -> int:
    async with Producer(settings) as producer:
        changed = await producer.resume_queue(name)
    _print({"queue": name, "paused": False, "was_paused": changed})
    return 0


async def list_queues(settings: Settings, as_json: bool) -> int:
    """Each known queue: jobs due, deferred and running, paused or not, its caps."""
    async with Producer(settings) as producer:
        if not producer.backend.usable:
            sys.stderr.write(
                f"error: Redis is {producer.backend.state.value} ({settings.redis_url_redacted})\n"
            )
            return 2
        report = await collect_stats(producer.backend, settings.queue_name, producer.queues.by_key)
    caps, global_caps = settings.queue_caps, settings.queue_global_caps
    consumed = settings.worker_queue_weights
    rows = [
        {
            **row,
            "cap_per_worker": caps.get(row["name"]),
            "cap_global": global_caps.get(row["name"]),
            "in_worker_queues": row["name"] in consumed,
        }
        for row in report["queues"]
    ]
    if as_json:
        for row in rows:
            _print(row)
        return 0
    sys.stdout.write(f"{'queue':<16}{'due':>9}{'deferred':>10}{'running':>9}  {'state':<8}caps\n")
    for row in rows:
        caps_text = ", ".join(
            f"{label} {value}"
            for label, value in (("per worker", row["cap_per_worker"]), ("global", row["cap_global"]))
            if value is not None
        )
        note = "" if row["in_worker_queues"] else "  (not in WORKER_QUEUES)"
        state = "paused" if row["paused"] else "active"
        sys.stdout.write(
            f"{printable(row['name'], 16):<16}{row['due']:>9}{row['deferred']:>10}{row['in_progress']:>9}"
            f"  {state:<8}{caps_text or '-'}{note}\n"
        )
    return 0
