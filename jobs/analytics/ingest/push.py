"""Group commit for pushes to the analytics event list.

Callers that arrive while a push is in flight join the next one, so fifty concurrent
`track_event` calls cost a couple of round trips, not fifty; a lone caller pays one round trip
as before. Each caller learns whether the backend took its chunks; if not, it buffers them itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from core.errors import BackendRefused, NotSent, ReplyLost
from core.plugin import BatchList

__all__ = ["GroupPusher"]

log = structlog.get_logger(__name__)


@dataclass
class _Group:
    chunks: list[bytes] = field(default_factory=list)
    events: int = 0
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupPusher:
    def __init__(self, events: BatchList, on_pushed: Callable[[int, int], Awaitable[None]]) -> None:
        self._events = events
        self._on_pushed = on_pushed  # (events, list length) after each successful push
        self._next: _Group | None = None
        self._task: asyncio.Task[None] | None = None

    async def push(self, chunks: list[bytes], events: int) -> bool:
        """True once the backend holds `chunks`; False when it certainly or possibly does not."""
        group = self._next = self._next or _Group()
        group.chunks.extend(chunks)
        group.events += events
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        # Shielded: a caller that gives up must not cancel the push of the others.
        return await asyncio.shield(group.done)

    async def _run(self) -> None:
        while (group := self._next) is not None:
            self._next = None  # later callers form the next group while this one is in flight
            try:
                length = await self._events.push(group.chunks)
            except (NotSent, BackendRefused) as exc:
                if isinstance(exc, BackendRefused):  # out of memory, say: a refused write wrote nothing
                    log.warning("analytics push refused by Redis; keeping events in memory", error=str(exc))
                group.done.set_result(False)
            except ReplyLost:
                # It may have landed: the callers keep their events in memory too, and the event
                # ids make a second copy harmless.
                log.warning("analytics push reply lost; keeping events in memory too", events=group.events)
                group.done.set_result(False)
            except Exception as exc:
                group.done.set_exception(exc)
            else:
                group.done.set_result(True)
                await self._on_pushed(group.events, length)

    async def aclose(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
