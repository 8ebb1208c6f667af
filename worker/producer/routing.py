"""Where an accepted job goes: a pure decision from the job's policy and the backend's state.

    QUEUE   the backend is up: try the queue (on failure, decide again with it down)
    SPOOL   keep it in the Postgres spool until the backend returns
    INLINE  run it now, in the caller's process
    REJECT  refuse with `EnqueueError`; `reason` says why and what to do

No I/O here, so every case is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.registry import Fallback
from worker.backend import LinkState

__all__ = ["Decision", "Route", "decide"]


class Route(StrEnum):
    QUEUE = "queue"
    SPOOL = "spool"
    INLINE = "inline"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    reason: str = ""


def decide(
    *,
    fallback: Fallback,
    inline_if_spool_down: bool,
    deferred: bool,
    backend: LinkState,
    spool_failed: bool = False,
) -> Decision:
    """The route for one job. `backend` is the state the last attempt found; `spool_failed` is
    set once an attempt to spool met an unreachable Postgres."""
    if backend is LinkState.UP:
        return Decision(Route.QUEUE)
    if backend is LinkState.DISABLED:
        # Nothing to spool for: spool-policy jobs run inline; deferred jobs cannot wait anywhere.
        if deferred:
            return Decision(
                Route.REJECT,
                "deferred jobs need Redis and REDIS_URL is not configured; "
                "set REDIS_URL or enqueue without defer_by",
            )
        if fallback == "reject":
            return Decision(Route.REJECT, "Redis is disabled and this job does not run inline; retry later")
        return Decision(Route.INLINE)
    if deferred or fallback == "spool":
        if not spool_failed:
            return Decision(Route.SPOOL)
        if deferred:
            return Decision(
                Route.REJECT,
                "Redis is down and Postgres is unreachable, so the deferred job can be neither queued nor "
                "kept; it would run early if run now. Retry later.",
            )
        if not inline_if_spool_down:
            return Decision(
                Route.REJECT,
                "Redis is down and Postgres is unreachable; this job does not run inline. Retry later.",
            )
        return Decision(Route.INLINE)
    if fallback == "reject":
        return Decision(Route.REJECT, "Redis is down and this job does not run inline; retry later")
    return Decision(Route.INLINE)
