"""Group commit for concurrent calls of one script: many callers, one pipelined write.

A web app enqueues from many concurrent requests. Sent one by one, each enqueue is its own round
trip and its own syscalls on both sides; Redis is idle between them while the callers wait.
Here a caller that finds no call in flight sends at once (a lone caller pays one round trip, as
before); callers that arrive while one is in flight join the next group, which goes out as one
pipeline of EVALSHA calls as soon as the flight lands. Each caller gets its own reply, or its own
error, exactly as if it had sent alone:

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
from worker.backend.link import RedisLink, refused
from worker.backend.scripts import Script

__all__ = ["GroupedScript"]

_Call = tuple[Sequence[str], Sequence[Any]]


class GroupedScript:
    """Calls of `script` through `link`, grouped while one is in flight."""

    def __init__(self, link: RedisLink, script: Script) -> None:
        self._link = link
        self._script = script
        self._busy = False
        self._calls: list[_Call] = []
        self._waiters: list[asyncio.Future[Any]] = []
        self._sender: asyncio.Task[None] | None = None
        self._lane = link.lane()  # one call in flight at a time: a connection of its own

    async def call(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if not self._busy:
            self._busy = True
            try:
                replies = await self._link.scripts(self._script, [(keys, args)], lane=self._lane)
            finally:
                self._busy = False
                self._start_sender()
            return self._reply(replies[0])
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((keys, args))
        self._waiters.append(waiter)
        return await waiter

    def _reply(self, reply: Any) -> Any:
        if isinstance(reply, ResponseError):
            raise refused(f"the {self._script.name} script", reply)
        return reply

    def _start_sender(self) -> None:
        if self._calls and (self._sender is None or self._sender.done()):
            self._busy = True  # callers from now on join the group the sender is about to take
            self._sender = asyncio.get_running_loop().create_task(self._send_groups())

    async def _send_groups(self) -> None:
        try:
            while self._calls:
                calls, waiters = self._calls, self._waiters
                self._calls, self._waiters = [], []
                await self._send(calls, waiters)
                # One loop turn for the callers just answered to come back with their next call
                # and join the next group, rather than trickle in behind a group of one.
                await asyncio.sleep(0)
        finally:
            self._busy = False

    async def _send(self, calls: list[_Call], waiters: list[asyncio.Future[Any]]) -> None:
        try:
            replies = await self._link.scripts(self._script, calls, lane=self._lane)
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
        """Wait for a group in flight (the producer's close)."""
        if self._sender is not None and not self._sender.done():
            await asyncio.gather(self._sender, return_exceptions=True)


def _each(exc: Exception) -> Exception:
    """A caller's own copy of a group's error (one exception object raised in many tasks would
    collect all their tracebacks)."""
    try:
        copy = type(exc)(*exc.args)
    except TypeError:
        return exc
    copy.__cause__ = exc.__cause__
    return copy
