"""Flow control a job declares: the queue it goes to and the rate limits it spends.

A queue is a name (`critical`, `default`, `bulk`, `ai`, or your own); each is one Redis sorted
set, `QUEUE_NAME` for `default` (so existing deployments keep their key) and
`<QUEUE_NAME>:<name>` for the others. Workers consume a list of queues (`WORKER_QUEUES`).

A rate limit is a name a job spends from (`ai_requests`, `ai_tokens`, `email`); the limit itself
is configured per deployment (`RATE_LIMITS=ai_requests=500/min`), and a name nobody configured
costs nothing. A job's cost can depend on its arguments (tokens asked for, recipients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import JobValidationError
from settings import QUEUE_NAME_RULE, Settings

__all__ = [
    "DEFAULT_QUEUE",
    "STANDARD_QUEUES",
    "QueueChooser",
    "RateCost",
    "check_queue_name",
    "queue_key",
]

DEFAULT_QUEUE = "default"
# The platform's queues, most urgent first: password resets and receipts, everything else,
# bulk sends and analytics batches, AI generation.
STANDARD_QUEUES = ("critical", "default", "bulk", "ai")

# A job whose queue depends on its arguments (send_email: a password reset is critical).
QueueChooser = Callable[[Mapping[str, Any]], str]


def queue_key(settings: Settings, name: str) -> str:
    """The Redis sorted set of queue `name`."""
    return settings.queue_name if name == DEFAULT_QUEUE else f"{settings.queue_name}:{name}"


def check_queue_name(name: object) -> str:
    if not isinstance(name, str) or not QUEUE_NAME_RULE.fullmatch(name):
        raise JobValidationError(
            f"queue: {name!r} is not a queue name; use 1-40 lowercase letters, digits, _ and - "
            f"(the standard queues are {', '.join(STANDARD_QUEUES)})"
        )
    return name


def ordered_union(*groups: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        seen.update(dict.fromkeys(group))
    return list(seen)


@dataclass(frozen=True, slots=True)
class RateCost:
    """A job spends `cost` (a number, or one computed from its arguments) from limit `limit`."""

    limit: str
    cost: int | Callable[[Mapping[str, Any]], int] = 1

    def of(self, payload: Mapping[str, Any]) -> int:
        cost = self.cost(payload) if callable(self.cost) else self.cost
        return max(int(cost), 0)
