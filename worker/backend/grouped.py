"""Group commit for concurrent calls of one script: many callers, one pipelined write.

A web app enqueues from many concurrent requests. Sent one by one, each enqueue is its own round
trip and its own syscalls on both sides; Redis is idle between them while the callers wait.
Here a lone caller (nothing in flight, nobody waiting) sends at once and pays one round trip, as
before. Callers that arrive while a call is in flight wait one loop turn and go out together as
one pipeline of EVALSHA calls. Two groups may be in flight, each on a connection of its own, and
they take turns: while Redis runs one group's scripts, the callers the other group answered
prepare their next calls, so neither the process nor Redis waits for the other. Each caller
gets its own reply, or its own error, exactly as if it had sent alone:

- nothing sent (`NotSent`): every caller of the group gets `NotSent`;
- the connection failed after sending (`ReplyLost`): a caller whose reply arrived gets it, the
  others `ReplyLost` (their job may or may not be queued);
- a refused call (OOM, NOPERM...) raises `BackendRefused` for that caller only.

A caller that gives up (cancelled, timed out) leaves the group to run for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from core.errors import ReplyLost
from worker.backend.link import Lane, RedisLink, refused
from worker.backend.scripts import Script

__all__ = ["GroupedScript"]

_Call = tuple[Sequence[str], Sequence[Any]]

# Groups in flight at once, each on a connection of its own: while Redis runs one group's
# scripts, the callers answered by the other prepare the next. With one, a group's round trip
# and Redis's work on it left the caller's process idle.
_LANES = 2


class GroupedScript:
    """Calls of `script` through `link`, grouped while others are in flight."""

    def __init__(self, link: RedisLink, script: Script) -> None:
        self._link = link
        self._script = script
        # Connections of their own, one call or group in flight on each; taken last in, first
        # out, so a lone caller keeps using one (checked after idling, see `Lane`).
        self._free = [link.lane() for _ in range(_LANES)]
        self._calls: list[_Call] = []
        self._waiters: list[asyncio.Future[Any]] = []
        self._dispatch_due = False
        self._flights: dict[asyncio.Task[None], int] = {}  # groups in flight, with their sizes

    async def call(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if len(self._free) == _LANES and not self._calls and not self._dispatch_due:
            # A lone caller (nothing in flight, nobody waiting, no group just answered): now.
            lane = self._free.pop()
            try:
                replies = await self._link.scripts(self._script, [(keys, args)], lane=lane)
            finally:
                self._land(lane, answered=False)
            return self._reply(replies[0])
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((keys, args))
        self._waiters.append(waiter)
        self._schedule_dispatch()
        return await waiter

    def _reply(self, reply: Any) -> Any:
        if isinstance(reply, ResponseError):
            raise refused(f"the {self._script.name} script", reply)
        return reply

    def _land(self, lane: Lane, *, answered: bool) -> None:
        """A call or group is back. After a group, always dispatch: the callers it answered come
        back with their next calls before the dispatch runs, and join one group."""
        self._free.append(lane)
        if answered or self._calls:
            self._schedule_dispatch()

    def _schedule_dispatch(self) -> None:
        """Send the waiting calls one loop turn from now: callers woken together (by the replies
        of one group) come back with their next call first and go out together, rather than
        trickle out in groups of one."""
        if not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Send what waits so that groups take turns: with nothing in flight, the waiting calls
        go out as two halves (Redis runs the second while the first's callers prepare their
        next calls); with a group in flight, the waiting ones go once they are half its size,
        else they wait for it to land. So the callers settle into two cohorts, one in Redis
        while the other is in Python, instead of one big group and a trail of small ones."""
        self._dispatch_due = False
        waiting = len(self._calls)
        if not self._free or not waiting:
            return
        if self._flights:
            if waiting < max(self._flights.values()) // 2:
                return  # the flight's landing dispatches again
            self._send_group(waiting)
        elif len(self._free) > 1 and waiting > 1:
            self._send_group(waiting // 2)
            self._send_group(len(self._calls))
        else:
            self._send_group(waiting)

    def _send_group(self, count: int) -> None:
        calls, waiters = self._calls[:count], self._waiters[:count]
        del self._calls[:count], self._waiters[:count]
        flight = asyncio.get_running_loop().create_task(self._fly(self._free.pop(), calls, waiters))
        self._flights[flight] = count

    async def _fly(self, lane: Lane, calls: list[_Call], waiters: list[asyncio.Future[Any]]) -> None:
        try:
            await self._send(lane, calls, waiters)
        finally:
            flight = asyncio.current_task()
            assert flight is not None
            self._flights.pop(flight, None)
            self._land(lane, answered=True)

    async def _send(self, lane: Lane, calls: list[_Call], waiters: list[asyncio.Future[Any]]) -> None:
        try:
            replies = await self._link.scripts(self._script, calls, lane=lane)
        except ReplyLost as exc:
            for i, waiter in enumerate(waiters):
                got = exc.replies[i] if i < len(exc.replies) else None
                self._settle(waiter, got, ReplyLost(str(exc)) if got is None else None)
            return
        except Exception as exc:  # NotSent or BackendRefused: the same, raised in each caller
            for waiter in waiters:
                self._settle(waiter, None, _each(exc))
            return
        except BaseException:  # this task cancelled at shutdown: the calls may be out
            for waiter in waiters:
                self._settle(waiter, None, ReplyLost("the enqueue was interrupted"))
            raise
        for waiter, reply in zip(waiters, replies, strict=True):
            self._settle(waiter, reply, None)

    def _settle(self, waiter: asyncio.Future[Any], reply: Any, error: BaseException | None) -> None:
        if waiter.done():  # its caller gave up
            return
        if error is None and isinstance(reply, ResponseError):
            error = refused(f"the {self._script.name} script", reply)
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(reply)

    async def aclose(self) -> None:
        """Wait for the groups in flight (the producer's close)."""
        while self._flights or self._calls:
            if self._flights:
                flights = list(self._flights)
                await asyncio.gather(*flights, return_exceptions=True)
                for flight in flights:  # one cancelled before it ran never cleared itself
                    self._flights.pop(flight, None)
            else:
                await asyncio.sleep(0)  # a dispatch is due: let it send


def _each(exc: Exception) -> Exception:
    """A caller's own copy of a group's error (one exception object raised in many tasks would
    collect all their tracebacks)."""
    try:
        copy = type(exc)(*exc.args)
    except TypeError:
        return exc
    copy.__cause__ = exc.__cause__
    return copy
