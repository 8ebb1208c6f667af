"""Job timeouts for all the attempts of a process with one timer, not a timer per attempt.

`asyncio.timeout` schedules a timer handle when an attempt starts and cancels it when it ends:
about 5 µs of the event loop's one thread per attempt on Python 3.11, a tenth of a worker's
CPU for short jobs. Here an attempt adds its deadline to a set and removes it when it ends. One
timer, set for the earliest deadline, cancels the tasks whose time is up and is set again for
the next. Jobs mostly share a timeout, so a new deadline is later than the timer's and costs a
set insert; a timer that fires for attempts that already ended only sets itself again.

An attempt cancelled by its deadline ends in `JobTimeout`. A cancellation from elsewhere (the
worker stopping) stays a cancellation, as with `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

from core.errors import JobTimeout

__all__ = ["Deadlines"]

T = TypeVar("T")

# The event loop runs a timer a clock tick early at most; a deadline this close counts as due.
_EARLY_S = 0.001


class _Deadline:
    __slots__ = ("cancelling", "expired", "task", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task = task
        self.when = when
        self.cancelling = task.cancelling()  # cancel requests already pending when it started
        self.expired = False


class Deadlines:
    """The timeouts of the attempts running on one event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[_Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    async def run(self, work: Awaitable[T], timeout: float) -> T:
        """Await `work` in the current task; past `timeout` seconds, cancel it and raise JobTimeout."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None, "an attempt runs in a task"
        if loop is not self._loop:  # a new event loop (tests, a producer run again): start afresh
            self._loop, self._running, self._timer, self._timer_at = loop, set(), None, math.inf
        deadline = _Deadline(task, loop.time() + timeout)
        self._running.add(deadline)
        if deadline.when < self._timer_at:
            self._arm(loop, deadline.when)
        try:
            result = await work
        except asyncio.CancelledError:
            if deadline.expired and task.uncancel() <= deadline.cancelling:
                raise JobTimeout(f"job ran longer than its {timeout:g}s timeout") from None
            raise
        finally:
            self._running.discard(deadline)
        if deadline.expired:  # it finished as its time ran out: the cancel is not for it
            task.uncancel()
        return result

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        assert self._loop is not None
        now = self._loop.time() + _EARLY_S
        earliest = math.inf
        for deadline in self._running:
            if deadline.expired:
                continue
            if deadline.when <= now:
                deadline.expired = True
                deadline.task.cancel()
            elif deadline.when < earliest:
                earliest = deadline.when
        if earliest < math.inf:
            self._arm(self._loop, earliest)
