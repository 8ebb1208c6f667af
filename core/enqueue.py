"""The seam through which a job queues another job, without importing the worker.

    enqueue = await ctx.deps.get(ENQUEUE)
    outcome = await enqueue("send_email", {...}, job_id="weekly-insights:a1:2025-W14")

The process that runs jobs provides it: the worker and the `Producer` both hand in their
producer's `enqueue_by_name`, so a follow-up job is queued in Redis, or run inline while Redis is
down, exactly as a web request's job would be. `job_id` is required: a job that runs twice must
not queue its follow-up twice, and a deterministic id is how Redis tells. The job is named by
its registered name, so the caller does not import the other family's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from core.deps import Resource
from core.errors import PermanentError
from settings import Settings

__all__ = ["ENQUEUE", "Enqueue", "EnqueueOutcome", "Placement"]

# Where an accepted job went: into the queue, run inline at once, or held in the durable spool
# until the queue is reachable.
Placement = Literal["queued", "inline", "spooled"]
# What an enqueue through the seam did: a placement, or nothing because the id already exists.
EnqueueOutcome = Placement | Literal["duplicate"]


class Enqueue(Protocol):
    """Queue `job` (a registered name) with its keyword arguments; raises JobValidationError."""

    async def __call__(self, job: str, kwargs: Mapping[str, Any], *, job_id: str) -> EnqueueOutcome: ...


async def _not_provided(settings: Settings) -> Enqueue:
    raise PermanentError("this process provides no enqueue function to jobs (Deps.provide(ENQUEUE, ...))")


async def _owner_closes(value: Enqueue) -> None:
    return None


ENQUEUE: Resource[Enqueue] = Resource("enqueue", _not_provided, _owner_closes)
