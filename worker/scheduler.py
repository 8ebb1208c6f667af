"""The registry's schedules: each due run is enqueued once per fleet, under a job id made of the
job's name and the due time, so several workers scheduling the same tick queue one job.

Ticks missed while the worker was down are not caught up: the next one is.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog
from arq.cron import next_cron

from jobs.registry import Registry, Schedule, TimeField
from worker.queue_store import QueueStore
from worker.redis_link import REDIS_FAILURES

__all__ = ["Scheduler", "next_run"]

log = structlog.get_logger("worker.scheduler")


def _field(value: TimeField) -> int | set[int] | None:
    return set(value) if isinstance(value, frozenset | set) else value


def next_run(schedule: Schedule, after: datetime) -> datetime:
    """The first time after `after` that `schedule` is due."""
    return next_cron(
        after,
        month=_field(schedule.month),
        day=_field(schedule.day),
        weekday=_field(schedule.weekday),
        hour=_field(schedule.hour),
        minute=_field(schedule.minute),
        second=_field(schedule.second),
        microsecond=123_456,  # arq's default: a little after the second, never early
    )


class Scheduler:
    def __init__(self, registry: Registry, store: QueueStore) -> None:
        self._schedules = registry.schedules
        self._store = store

    async def run_forever(self) -> None:
        if not self._schedules:
            return
        await asyncio.gather(*(self._run(schedule) for schedule in self._schedules))

    async def _run(self, schedule: Schedule) -> None:
        now = datetime.now(UTC)
        due = now if schedule.run_at_startup else next_run(schedule, now)
        while True:
            await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
            job_id = f"cron:{schedule.job}:{int(due.timestamp())}"
            if not self._store.link.usable:
                # The outage is logged once by the link; a missed tick is caught by the next one.
                due = next_run(schedule, max(due, datetime.now(UTC)))
                continue
            try:
                await self._store.enqueue(job_id=job_id, name=schedule.job, payload={})
            except REDIS_FAILURES as exc:
                log.warning(
                    "scheduled run not queued", job=schedule.job, error=f"{type(exc).__name__}: {exc}"
                )
            due = next_run(schedule, max(due, datetime.now(UTC)))
