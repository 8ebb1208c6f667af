"""The registry's schedules: each due run is enqueued once per fleet, under a job id made of the
job's name and the due time, so several workers scheduling the same tick queue one job.

Schedules are wall-clock times in their time zone (`Schedule.tz`, UTC by default), computed
here with zoneinfo, daylight-saving changes included (see `next_run`).

A run missed while no worker was up, or while Redis was away, is queued late when its schedule
allows (`Schedule.catch_up`): only the latest one, and only if Redis's note of the latest
queued run is older. A schedule's first start on a Redis writes that note, so runs due before
it (a fresh install, a new schedule) are not caught up: nothing missed them. Other schedules
just wait for their next run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

import structlog

from core.errors import BackendError
from core.flow import queue_key
from core.registry import Registry, Schedule, TimeField
from settings import Settings
from worker.backend import QueueBackend

__all__ = ["Scheduler", "latest_run", "next_run"]

log = structlog.get_logger(__name__)

# While a missed run waits for Redis to come back, look again this often.
_RECHECK_S = 1.0
# A schedule's catch-up window is walked tick by tick; this bounds the walk for tiny periods.
_MAX_TICKS_WALKED = 100_000
# A little after the second, never early (arq's default, kept so due times did not move).
_MICROSECOND = 123_456
# A day/month/weekday combination can be rare (29 February on a Monday): look this far ahead.
_MAX_DAYS_AHEAD = 366 * 28


def _values(value: TimeField, full: range) -> list[int]:
    if value is None:
        return list(full)
    chosen = {value} if isinstance(value, int) else set(value)
    return sorted(v for v in chosen if v in full)


def _day_matches(schedule: Schedule, day: date) -> bool:
    for value, actual in (
        (schedule.month, day.month),
        (schedule.day, day.day),
        (schedule.weekday, day.weekday()),
    ):
        if value is None:
            continue
        if actual not in ({value} if isinstance(value, int) else value):
            return False
    return True


def _first_after(
    day: date, hours: Sequence[int], minutes: Sequence[int], seconds: Sequence[int], schedule: Schedule,
    after: datetime,
) -> datetime | None:  # fmt: skip
    """The first wall-clock time of the schedule on `day` whose instant is after `after`."""
    zone = schedule.zone

    def instant(h: int, m: int, s: int) -> datetime:
        # fold=0: a repeated local time is its first occurrence; a skipped one is read with the
        # offset from before the jump, i.e. as far past the jump as it was into the gap.
        local = datetime.combine(day, time(h, m, s, _MICROSECOND), zone)
        return local.astimezone(UTC)

    for h in hours:
        if instant(h, minutes[-1], seconds[-1]) <= after:
            continue
        for m in minutes:
            if instant(h, m, seconds[-1]) <= after:
                continue
            for s in seconds:
                candidate = instant(h, m, s)
                if candidate > after:
                    return candidate
    return None


def next_run(schedule: Schedule, after: datetime) -> datetime:
    """The first time after `after` that `schedule` is due, as an aware UTC datetime."""
    after = after.astimezone(UTC)
    hours = _values(schedule.hour, range(24))
    minutes = _values(schedule.minute, range(60))
    seconds = _values(schedule.second, range(60))
    if not (hours and minutes and seconds):
        raise ValueError(
            f"schedule for {schedule.job!r} never runs: an hour, minute or second is out of range"
        )
    # Start the day before: an instant's local date can be a day behind or ahead of UTC's.
    day = after.astimezone(schedule.zone).date() - timedelta(days=1)
    for _ in range(_MAX_DAYS_AHEAD):
        if _day_matches(schedule, day):
            found = _first_after(day, hours, minutes, seconds, schedule, after)
            if found is not None:
                return found
        day += timedelta(days=1)
    raise ValueError(f"schedule for {schedule.job!r} never runs: no day matches its month, day and weekday")


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
    def __init__(self, registry: Registry, backend: QueueBackend, settings: Settings) -> None:
        self._schedules = registry.schedules
        self._backend = backend
        # Notes are kept per deployment (QUEUE_NAME); each run goes to its job's own queue.
        self._queue_name = settings.queue_name
        self._queue_of = {
            s.job: queue_key(settings, registry.get(s.job).queue_for({})) for s in registry.schedules
        }

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
            if self._backend.usable:
                await self._first_start(schedule, now)
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
                self._queue_of[schedule.job], job_id=_job_id(schedule, due), name=schedule.job, kwargs={}
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
            if note is None:  # Redis was away when this worker started
                note = await self._first_start(schedule, datetime.now(UTC))
        except BackendError:
            return False
        if note is None:
            return False  # Redis failed again: try later
        if note >= int(due.timestamp()):
            return True
        log.info("queueing a missed scheduled run", job=schedule.job, due=due.isoformat())
        return await self._queue(schedule, due)

    async def _first_start(self, schedule: Schedule, now: datetime) -> int | None:
        """On a Redis with no note for `schedule` (its first start there), note `now`: runs due
        before it are not missed runs. Returns the note. Raises `BackendError`."""
        try:
            note = await self._backend.schedule_note(self._queue_name, schedule.job)
            if note is None:
                note = int(now.timestamp())
                await self._backend.set_schedule_note(
                    self._queue_name, schedule.job, note, _note_ttl_s(schedule)
                )
                log.debug(
                    "schedule starts on this Redis; runs due before now are not caught up",
                    job=schedule.job,
                    next_due=next_run(schedule, now).isoformat(),
                )
        except BackendError as exc:
            log.debug("schedule note not read", job=schedule.job, error=f"{type(exc).__name__}: {exc}")
            return None
        return note


def _note_ttl_s(schedule: Schedule) -> float:
    # Long enough to cover the catch-up window after the next run; no key lives forever.
    window = schedule.catch_up.total_seconds() if schedule.catch_up is not None else 0.0
    return window + 8 * 86_400
