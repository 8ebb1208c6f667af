"""The registry's schedules: each due run is enqueued once per fleet, under a job id made of the
job's name and the due time, so several workers scheduling the same tick queue one job.

A run missed while no worker was up, or while Redis was away, is queued late when its schedule
allows (`Schedule.catch_up`): only the latest one, and only if Redis's note of the latest
queued run is older. Other schedules just wait for their next run.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog
from arq.cron import next_cron

from core.errors import BackendError
from core.registry import Registry, Schedule, TimeField
from worker.backend import QueueBackend

__all__ = ["Scheduler", "latest_run", "next_run"]

log = structlog.get_logger(__name__)

# While a missed run waits for Redis to come back, look again this often.
_RECHECK_S = 1.0
# A schedule's catch-up window is walked tick by tick; this bounds the walk for tiny periods.
_MAX_TICKS_WALKED = 100_000


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


def latest_run(schedule: Schedule, now: datetime, within: timedelta) -> datetime | None:
    """The last time at or before `now`, and after `now - within`, that `schedule` was due."""
    found = None
    due = next_run(schedule, now - within)
    for _ in range(_MAX_TICKS_WALKED):
        if due > now:
            break
        found = due
        due = next_run(schedule, due)
    return found


def _job_id(schedule: Schedule, due: datetime) -> str:
    return f"cron:{schedule.job}:{int(due.timestamp())}"


class Scheduler:
    def __init__(self, registry: Registry, backend: QueueBackend, queue: str) -> None:
        self._schedules = registry.schedules
        self._backend = backend
        self._queue_name = queue

    async def run_forever(self) -> None:
        if not self._schedules:
            return
        await asyncio.gather(*(self._run(schedule) for schedule in self._schedules))

    async def _run(self, schedule: Schedule) -> None:
        now = datetime.now(UTC)
        due = now if schedule.run_at_startup else next_run(schedule, now)
        # A run that came due while no worker was up (a schedule that runs at startup just did).
        missed = None
        if schedule.catch_up and not schedule.run_at_startup:
            missed = latest_run(schedule, now, schedule.catch_up)
        while True:
            wait = (due - datetime.now(UTC)).total_seconds()
            if missed is not None:
                wait = min(wait, _RECHECK_S)
            await asyncio.sleep(max(wait, 0))
            if missed is not None and self._backend.usable and await self._catch_up(schedule, missed):
                missed = None
            if datetime.now(UTC) < due:
                continue
            if not self._backend.usable:
                # The outage is logged once by the link; the run is queued late when it ends if
                # the schedule allows, else the next run is the one that happens.
                if schedule.catch_up:
                    missed = due
                due = next_run(schedule, max(due, datetime.now(UTC)))
                continue
            if not await self._queue(schedule, due) and schedule.catch_up:
                missed = due
            due = next_run(schedule, max(due, datetime.now(UTC)))

    async def _queue(self, schedule: Schedule, due: datetime) -> bool:
        """Queue the run due at `due` and note it; False when Redis failed (logged)."""
        try:
            await self._backend.enqueue(
                self._queue_name, job_id=_job_id(schedule, due), name=schedule.job, kwargs={}
            )
            if schedule.catch_up:
                due_s = int(due.timestamp())
                await self._backend.set_schedule_note(
                    self._queue_name, schedule.job, due_s, _note_ttl_s(schedule)
                )
        except BackendError as exc:
            log.warning(
                "scheduled run not queued",
                job=schedule.job,
                due=due.isoformat(),
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True

    async def _catch_up(self, schedule: Schedule, due: datetime) -> bool:
        """Queue a missed run unless a later (or the same) one was queued; False to try again."""
        if schedule.catch_up is None or datetime.now(UTC) - due > schedule.catch_up:
            log.warning("missed scheduled run is too old to catch up", job=schedule.job, due=due.isoformat())
            return True
        try:
            note = await self._backend.schedule_note(self._queue_name, schedule.job)
        except BackendError:
            return False
        if note is not None and note >= int(due.timestamp()):
            return True
        log.info("queueing a missed scheduled run", job=schedule.job, due=due.isoformat())
        return await self._queue(schedule, due)


def _note_ttl_s(schedule: Schedule) -> float:
    # Long enough to cover the catch-up window after the next run; no key lives forever.
    window = schedule.catch_up.total_seconds() if schedule.catch_up is not None else 0.0
    return window + 8 * 86_400
