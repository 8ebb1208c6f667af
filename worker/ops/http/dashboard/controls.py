"""Queue controls the dashboard shows before the backend has them: the one place to wire the
named queues, cancel, pause/resume and progress of the queues issue (issue 16) when it lands.

Today there is one queue (`QUEUE_NAME`), and cancel / pause / resume answer
`NotAvailable` with a message the page shows as it is. The routes, buttons, confirmation and
CSRF checks around them are complete; wiring means replacing the bodies below with the planned
producer calls (`Producer.cancel(job_id)`, `Producer.pause_queue(name)`,
`Producer.resume_queue(name)`, the queue list) and nothing else.
"""

from __future__ import annotations

from typing import Any

from settings import Settings
from worker.producer import Producer

__all__ = [
    "NotAvailable",
    "cancel_job",
    "pause_queue",
    "paused_queues",
    "progress_of",
    "queue_names",
    "resume_queue",
]

_LATER = "is not available in this version of the runner (it comes with named queues, issue 16)"


class NotAvailable(Exception):
    """The runner cannot do this yet; the message says so and is shown to the operator."""


def queue_names(settings: Settings) -> list[str]:
    """The queues the pages list. Issue 16: `critical`, `default` (QUEUE_NAME), `bulk`, `ai`."""
    return [settings.queue_name]


async def paused_queues(producer: Producer) -> set[str]:
    """The queues workers are told not to claim from. Issue 16: read the pause flags."""
    return set()


async def cancel_job(producer: Producer, job_id: str) -> str:
    """Cancel a queued or deferred job; returns what happened. Issue 16: `producer.cancel`."""
    raise NotAvailable(f"cancelling job {job_id} {_LATER}")


async def pause_queue(producer: Producer, name: str) -> str:
    """Stop workers claiming from `name`. Issue 16: `producer.pause_queue`."""
    raise NotAvailable(f"pausing queue {name} {_LATER}")


async def resume_queue(producer: Producer, name: str) -> str:
    """Let workers claim from `name` again. Issue 16: `producer.resume_queue`."""
    raise NotAvailable(f"resuming queue {name} {_LATER}")


def progress_of(status: dict[str, Any]) -> tuple[float, str | None] | None:
    """A running job's progress (fraction 0..1, message) from its status report, when the
    runner reports one (issue 16 adds `progress` to the status); None otherwise."""
    progress = status.get("progress")
    if isinstance(progress, dict):
        fraction, message = progress.get("fraction"), progress.get("message")
    else:
        fraction, message = progress, None
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        return None
    return float(fraction), message if isinstance(message, str) else None
