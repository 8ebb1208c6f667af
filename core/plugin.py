"""How a job family attaches behaviour to the producer and the worker: a plug-in.

Most families are only jobs. One that needs a life of its own in the process (analytics
ingestion: a buffer, a background drainer, a Redis list) registers a plug-in factory in the
registry. Every producer and every worker makes one instance and drives it through `Plugin`:

    start(host)   the process is starting; provide resources into `host.deps`
    redis_back()  the queue backend answers again after an outage
    close()       the process is stopping; write out what is held

The host gives the plug-in what only the runner has, typed here so the family never imports
the runner: the settings, the dependencies, whether the backend is usable, a reliable batch
list of its own in the backend, a way to enqueue a registered job, and a way to run one
attempt of a registered job inline through the runner's own execution path.

A plug-in that accepts events for the producer's `track_event(s)` calls is an `EventSink`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from core.deps import Deps
from core.enqueue import EnqueueOutcome
from settings import Settings

__all__ = [
    "BatchList",
    "ClaimedBatch",
    "EventSink",
    "Plugin",
    "PluginFactory",
    "PluginHost",
    "RefusedEvent",
    "Role",
    "TrackResult",
]

Role = Literal["producer", "worker"]


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    chunks: list[bytes]
    batch_id: str


class BatchList(Protocol):
    """A list in the backend with reliable batch consumption: a claimed batch moves aside under
    a lease and is deleted only when acknowledged; a batch whose consumer died comes back.

    Raises `NotSent` / `ReplyLost` when the backend is unavailable and `BackendRefused` when it
    refuses (out of memory, ACL).
    """

    async def push(self, items: Sequence[bytes]) -> int:
        """Append `items` in one round trip; return the list's length."""
        ...

    async def claim(self, *, max_bytes: int, max_items: int, lease_s: float) -> ClaimedBatch | None:
        """Move a batch (at least one item, up to `max_bytes`) from the head aside under a lease."""
        ...

    async def ack(self, batch_id: str, *, dead: Sequence[bytes] = ()) -> None:
        """Forget a processed batch; `dead` items are kept aside for inspection."""
        ...

    async def give_back(self, batch_id: str) -> None:
        """Put one claimed batch back at the head, in order (its processing failed)."""
        ...

    async def give_back_expired(self, *, limit: int = 100) -> int:
        """Put back every batch whose lease is over (its consumer died); return how many."""
        ...


class PluginHost(Protocol):
    """What the producer or worker offers a plug-in."""

    @property
    def settings(self) -> Settings: ...

    @property
    def role(self) -> Role: ...

    @property
    def deps(self) -> Deps: ...

    @property
    def backend_usable(self) -> bool:
        """True while the queue backend is believed reachable (the breaker is closed)."""
        ...

    def batch_list(self, namespace: str) -> BatchList:
        """The plug-in's own reliable list (keys under the namespace, per queue)."""
        ...

    async def enqueue(self, job: str, kwargs: Mapping[str, Any], *, job_id: str) -> EnqueueOutcome:
        """Enqueue a registered job as the producer would (queued, spooled or inline)."""
        ...

    async def run_attempt(self, job: str, *, job_id: str) -> None:
        """Run one attempt of a registered job (no arguments) inline, here and now."""
        ...


class Plugin(Protocol):
    name: str

    async def start(self, host: PluginHost) -> None: ...

    async def redis_back(self) -> None: ...

    async def close(self) -> None: ...


PluginFactory = Callable[[], Plugin]


@dataclass(frozen=True, slots=True)
class RefusedEvent:
    index: int  # position in the caller's list
    reason: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class TrackResult:
    accepted: int
    refused: int
    errors: tuple[RefusedEvent, ...] = ()
    stored_in: Literal["redis", "memory"] | None = None  # where the accepted events went


@runtime_checkable
class EventSink(Protocol):
    """A plug-in that takes events for `Producer.track_event(s)`."""

    async def track(self, events: Iterable[Mapping[str, Any]]) -> TrackResult: ...

    async def track_one(self, event: Mapping[str, Any]) -> str: ...
