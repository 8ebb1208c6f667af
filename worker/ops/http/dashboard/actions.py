"""What an operator can do from the dashboard, and the audit trail of who did it.

Each action returns one sentence for the page and is logged once (`dashboard action`, with
`who`, `action`, `target` and `outcome`); the latest are also kept in memory for the overview.
Refusals the operator can fix (nothing to retry, Redis away) raise `ActionRefused`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from core.errors import BackendError, EnqueueError, JobValidationError
from core.registry import Registry
from worker.backend import JobState
from worker.ledger import PG_DOWN_ERRORS
from worker.ops.deadletters import retry_dead
from worker.ops.http.dashboard import controls
from worker.ops.http.dashboard.access import Operator
from worker.producer import Producer

__all__ = ["ActionRefused", "Actions", "AuditEntry", "PurgeScope"]

log = structlog.get_logger(__name__)

_Work = Callable[[], Awaitable[str]]
# An action that met one of these was not done (or not all of it): said so, and audited.
_FAILURES: tuple[type[BaseException], ...] = (BackendError, *PG_DOWN_ERRORS, EnqueueError)


class ActionRefused(Exception):
    """The action was not done; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    who: str
    action: str
    target: str
    outcome: str


@dataclass(frozen=True, slots=True)
class PurgeScope:
    """Which dead letters a purge deletes: one (`job_id`), those matching a filter, or all."""

    job_id: str | None = None
    job_name: str | None = None
    older_than_days: float | None = None

    def describe(self) -> str:
        if self.job_id is not None:
            return f"dead letter {self.job_id}"
        parts = []
        if self.job_name is not None:
            parts.append(f"of job {self.job_name}")
        if self.older_than_days is not None:
            parts.append(f"older than {self.older_than_days:g} days")
        return "dead letters " + " and ".join(parts) if parts else "all dead letters"


class Actions:
    def __init__(self, registry: Registry, *, keep: int = 50) -> None:
        self._registry = registry
        self.recent: deque[AuditEntry] = deque(maxlen=keep)

    def _audit(self, operator: Operator, action: str, target: str, outcome: str) -> str:
        self.recent.appendleft(AuditEntry(datetime.now(UTC), operator.who, action, target, outcome))
        log.info(
            "dashboard action",
            who=operator.who,
            role=operator.role,
            action=action,
            target=target,
            outcome=outcome,
        )
        return outcome

    async def run(self, operator: Operator, action: str, target: str, work: _Work) -> str:
        """Do `work`, audit it whatever happens, and return its sentence."""
        started = time.monotonic()
        try:
            outcome = await work()
        except (ActionRefused, controls.NotAvailable) as exc:
            self._audit(operator, action, target, f"refused: {exc}")
            raise ActionRefused(str(exc)) from None
        except _FAILURES as exc:
            self._audit(operator, action, target, f"failed: {type(exc).__name__}")
            raise ActionRefused(
                f"{action} failed: {type(exc).__name__}: {exc}; try again when it is back"
            ) from None
        log.debug("dashboard action took", ms=round((time.monotonic() - started) * 1000, 1))
        return self._audit(operator, action, target, outcome)

    # -- the actions -----------------------------------------------------------------------------

    async def retry(self, operator: Operator, producer: Producer, job_id: str) -> str:
        async def work() -> str:
            if await producer.ledger.dead_letter_of(job_id) is not None:
                (report,) = await retry_dead(producer, [job_id])
                return f"job {job_id} enqueued again as {report['job_id']} ({report['mode']})"
            view = await producer.backend.job(producer.queues.keys, job_id)
            if view.state is JobState.FAILED and view.record is not None:
                handle = await producer.enqueue_job(view.record.name, view.record.kwargs, background=True)
                return f"job {job_id} enqueued again as {handle.job_id} ({handle.mode})"
            raise ActionRefused(
                f"job {job_id} is {view.state.value.replace('_', ' ')}, not failed or dead: nothing to retry"
            )

        return await self.run(operator, "retry", job_id, work)

    async def purge(self, operator: Operator, producer: Producer, scope: PurgeScope) -> str:
        async def work() -> str:
            ledger = producer.ledger
            if scope.job_id is not None:
                if await ledger.dead_letter_of(scope.job_id) is None:
                    raise ActionRefused(
                        f"there is no dead letter {scope.job_id} (already retried or purged?)"
                    )
                await ledger.forget_dead_letter(scope.job_id)
                return f"dead letter {scope.job_id} purged"
            deleted = await ledger.purge_dead_letters(
                older_than_days=scope.older_than_days, job_name=scope.job_name
            )
            return (
                f"purged {deleted:,} ({scope.describe()})"
                if deleted
                else f"nothing to purge ({scope.describe()})"
            )

        return await self.run(operator, "purge", scope.describe(), work)

    async def run_schedule(self, operator: Operator, producer: Producer, job: str) -> str:
        async def work() -> str:
            if job not in {s.job for s in self._registry.schedules}:
                raise ActionRefused(f"{job} has no schedule; run scheduled jobs only")
            job_id = f"cron:{job}:now-{int(time.time() * 1000)}"
            try:
                handle = await producer.enqueue_job(job, {}, job_id=job_id, background=True)
            except JobValidationError as exc:
                raise ActionRefused(str(exc)) from None
            return f"{job} enqueued now as {handle.job_id} ({handle.mode})"

        return await self.run(operator, "run schedule", job, work)

    async def cancel(self, operator: Operator, producer: Producer, job_id: str) -> str:
        return await self.run(operator, "cancel", job_id, lambda: controls.cancel_job(producer, job_id))

    async def pause(self, operator: Operator, producer: Producer, queue: str) -> str:
        return await self.run(operator, "pause", queue, lambda: controls.pause_queue(producer, queue))

    async def resume(self, operator: Operator, producer: Producer, queue: str) -> str:
        return await self.run(operator, "resume", queue, lambda: controls.resume_queue(producer, queue))
