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
    too_big_inline: str | None = None,
) -> Decision:
    """The route for one job. `backend` is the state the last attempt found; `spool_failed` is
    set once an attempt to spool met an unreachable Postgres; `too_big_inline` says why this
    job may not run inline in the caller (it then waits in the spool, or is refused)."""
    if backend is LinkState.UP:
        return Decision(Route.QUEUE)
    # Without Redis configured at all, everything runs inline by the operator's choice; a job too
    # big for a caller's process is kept from it only while a configured Redis is down.
    if too_big_inline is not None and backend is LinkState.DOWN:
        if not spool_failed:
            return Decision(Route.SPOOL)
        return Decision(
            Route.REJECT,
            f"Redis and Postgres are down and this job is too big to run inline ({too_big_inline}); "
            "retry later",
        )
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
