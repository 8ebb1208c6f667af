"""What every transport offers, and the outcome types the delivery code understands.

`send` delivers one message to its recipients and raises `TransientError` or
`PermanentError` (from `worker.errors`) when the provider does not take it. `send_batch`
delivers one copy per recipient and reports each outcome instead of raising, since some
copies may already be out when a later one fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jobs.email.mime import Outgoing

__all__ = ["Failed", "OnSent", "Sent", "Transport"]


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    # Recipients the server refused while it accepted the others: address -> reason.
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    permanent: bool
    retry_after: float | None = None


# Called right after the provider accepted a copy, before anything else is sent or awaited, so
# the copy is recorded as sent at once: a run killed later does not send it again.
OnSent = Callable[[Outgoing, Sent], Awaitable[None]]


class Transport(Protocol):
    name: str
    # How many copies `send_batch` takes at once (SendGrid: personalizations per request).
    batch_size: int

    async def send(self, message: Outgoing) -> Sent: ...

    async def send_batch(
        self, messages: Sequence[Outgoing], on_sent: OnSent | None = None
    ) -> list[Sent | Failed]:
        """One outcome per message, in order; each message has one recipient and its own key.
        `on_sent` is awaited for each accepted copy as soon as the provider accepted it."""
        ...

    async def aclose(self) -> None: ...
