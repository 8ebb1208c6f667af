"""Where the flush job finds buffered events: the seam between jobs and their owner's buffer.

The analytics plug-in provides it: in a worker, a queue over the plug-in's Redis list; in a
producer, its in-process buffer (used while Redis is down). Either way a batch is claimed,
written, and only then acknowledged; a batch whose write failed is released, and a batch
whose consumer died is recovered. So every event reaches Postgres at least once, and the unique event id makes
that exactly once in the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from core.deps import Resource
from core.errors import PermanentError
from core.plugin import ClaimedBatch
from settings import Settings

__all__ = ["EVENT_QUEUE", "ClaimedBatch", "EventQueue"]


class EventQueue(Protocol):
    """Buffered event chunks. Errors reaching the buffer are `TransientError`s."""

    # Held by whoever consumes the queue, so one process runs one flush at a time.
    lock: asyncio.Lock

    async def claim(self) -> ClaimedBatch | None:
        """The next batch (about ANALYTICS_BATCH_BYTES), or None when the buffer is empty."""
        ...

    async def ack(self, batch: ClaimedBatch, *, dead: Sequence[bytes] = ()) -> None:
        """The batch is committed: drop it. `dead` chunks could not be stored; keep them aside."""
        ...

    async def release(self, batch: ClaimedBatch) -> None:
        """The batch was not written: put it back for the next flush."""
        ...

    async def recover(self) -> int:
        """Put back batches whose consumer died; return how many."""
        ...


async def _not_provided(settings: Settings) -> EventQueue:
    raise PermanentError(
        "no analytics event queue in this process: the analytics plug-in provides one in every "
        "worker and producer whose registry includes it"
    )


async def _owner_closes(queue: EventQueue) -> None:
    return None


EVENT_QUEUE: Resource[EventQueue] = Resource("analytics_event_queue", _not_provided, _owner_closes)
