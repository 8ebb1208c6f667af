"""The named queues and the queue controls as the dashboard uses them: the queues the pages
list (by Redis key), their pause flags, cancel, pause and resume through the producer, and a
running job's progress from its status."""

from __future__ import annotations

from typing import Any

from core.errors import EnqueueError
from core.flow import STANDARD_QUEUES, ordered_union, queue_key
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

_MESSAGES = {
    "cancelled": "job {job_id} was waiting: removed, its status is now cancelled",
    "requested": "job {job_id} is running: it was asked to stop (it ends cancelled if it does)",
    "finished": "job {job_id} had already finished: nothing to cancel",
    "not_found": "there is no job {job_id} to cancel",
}


class NotAvailable(Exception):
    """The runner cannot do this; the message says so and is shown to the operator."""


def queue_names(settings: Settings) -> list[str]:
    """The queues the pages list, by Redis key: the ones workers consume, then the standard
    ones (critical, default = QUEUE_NAME, bulk, ai)."""
    return [
        queue_key(settings, name) for name in ordered_union(settings.worker_queue_weights, STANDARD_QUEUES)
    ]


def _name(settings: Settings, key: str) -> str:
    for name in ordered_union(settings.worker_queue_weights, STANDARD_QUEUES):
        if queue_key(settings, name) == key:
            return name
    raise NotAvailable(f"{key} is not one of the runner's queues")


async def paused_queues(producer: Producer) -> set[str]:
    """The queues (keys) workers are told not to claim from."""
    return await producer.backend.paused(queue_names(producer.settings))


async def cancel_job(producer: Producer, job_id: str) -> str:
    """Cancel a job wherever it is; returns what happened."""
    try:
        outcome = await producer.cancel(job_id)
    except EnqueueError as exc:
        raise NotAvailable(str(exc)) from None
    return _MESSAGES[outcome.value].format(job_id=job_id)


async def pause_queue(producer: Producer, key: str) -> str:
    """Stop workers claiming from queue `key`."""
    name = _name(producer.settings, key)
    changed = await producer.pause_queue(name)
    return f"queue {name} paused" if changed else f"queue {name} was already paused"


async def resume_queue(producer: Producer, key: str) -> str:
    """Let workers claim from queue `key` again."""
    name = _name(producer.settings, key)
    changed = await producer.resume_queue(name)
    return f"queue {name} resumed" if changed else f"queue {name} was not paused"


def progress_of(status: dict[str, Any]) -> tuple[float, str | None] | None:
    """A running job's progress (fraction 0..1, message) from its status report; None when
    it reports none."""
    progress = status.get("progress")
    if isinstance(progress, dict):
        fraction, message = progress.get("fraction"), progress.get("message")
    else:
        fraction, message = progress, None
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        return None
    return float(fraction), message if isinstance(message, str) else None
