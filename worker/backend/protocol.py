"""The queue backend's typed interface: every queue operation the runner and ops perform.

One implementation exists (`RedisBackend`); the producer, the engine, the ledger's relay and
reconciler, and the ops surface are written against this protocol. Every operation raises the
core's backend errors only: `NotSent` (certainly not applied), `ReplyLost` (unknown), both
`BackendUnavailable`, and `BackendRefused` (auth, ACL, wrong type, out of memory, script error).

Write side: enqueue (one and many), claim, finish, release, extend, withdraw, presence and the
wake-up. Read side: queue counts, pages of jobs by state, one job, a result, worker snapshots.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol

from core.codec import JobRecord, ResultRecord
from core.plugin import BatchList
from worker.backend.link import LinkState

__all__ = [
    "CancelOutcome",
    "ClaimBatch",
    "ClaimQueue",
    "ClaimedJob",
    "CommandStats",
    "EnqueueReply",
    "Finished",
    "JobState",
    "JobView",
    "LinkState",
    "NewJob",
    "PoisonEntry",
    "Presence",
    "QueueBackend",
    "QueueCounts",
    "ServerInfo",
    "WithdrawOutcome",
]


class EnqueueReply(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    NOT_SENT = "not_sent"  # certainly not in the queue (bulk only; `enqueue` raises NotSent)
    UNKNOWN = "unknown"  # sent, reply lost (bulk only; `enqueue` raises ReplyLost)


class WithdrawOutcome(StrEnum):
    WITHDRAWN = "withdrawn"
    NEVER_ARRIVED = "never_arrived"
    ALREADY_STARTED = "already_started"


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # was queued or deferred: removed, with a cancelled result
    REQUESTED = "requested"  # is running: its worker passes the request on to the job
    FINISHED = "finished"  # already over: nothing to cancel
    NOT_FOUND = "not_found"  # the backend has no trace of it


class Presence(IntEnum):
    UNKNOWN = 0  # the backend has no trace of the job
    PENDING = 1  # queued, deferred or running
    FINISHED = 2  # its result is kept


class JobState(StrEnum):
    QUEUED = "queued"  # due now, waiting for a worker
    DEFERRED = "deferred"  # due later (deferred, or waiting for a retry)
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    FAILED = "failed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class NewJob:
    job_id: str
    record: bytes  # the job record, as `core.codec.encode_job` writes it
    score: int  # start time, ms since the epoch


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: str
    score: int
    record: bytes | None  # None when the job key expired
    job_try: int  # this try's number: the tries that ended in a retry, plus one
    interruptions: int = 0  # earlier claims that never ended: a worker died or stopped mid-run
    untrusted: str | None = None  # why the record must not run (signing on, a bad signature)
    queue: str = ""  # the queue (its Redis key) it was claimed from


@dataclass(frozen=True, slots=True)
class ClaimQueue:
    """One queue a claim visits: its key, how many jobs of it this worker may still start
    (None: no cap of its own) and its cap across workers (None: none)."""

    key: str
    room: int | None = None
    global_cap: int | None = None


@dataclass(frozen=True, slots=True)
class PoisonEntry:
    """A queue entry no producer of ours writes, set aside by the claim (never run)."""

    raw_id: bytes
    score: str
    reason: str
    queue: str = ""

    @property
    def shown_id(self) -> str:
        """The id as text for logs and the dead letter: undecodable bytes and control
        characters (NUL included, which Postgres cannot store) escaped."""
        text = self.raw_id[:200].decode("utf-8", "backslashreplace")
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    jobs: list[ClaimedJob]
    more: bool  # more jobs may be due now than the claim's limit let it take
    next_due_ms: int | None  # earliest score not yet due (deferred, retrying or running)
    poison: list[PoisonEntry] = field(default_factory=list)
    paused: frozenset[str] = frozenset()  # queues the claim skipped because they are paused
    capped: frozenset[str] = frozenset()  # queues with due jobs a cap left behind


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished attempt to record: a result record to keep, or a new score to run again at."""

    job_id: str
    result: bytes | None = None
    run_again_at_ms: int | None = None
    # For a run again: True when the try was interrupted (cancelled at shutdown), so it does
    # not count as one of the job's tries.
    interrupted: bool = False
    queue: str = ""  # the queue (its Redis key) the job was claimed from
    # For a run again: the job never started (a rate limit gave it a later turn), so the claim
    # counts as neither a try nor an interruption.
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class QueueCounts:
    queue: str
    queued: int  # due now
    deferred: int  # due later, not running
    in_progress: int  # as the live workers' snapshots report it


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as the read side sees it. `problem` says why a record could not be read."""

    job_id: str
    state: JobState
    queue: str
    record: JobRecord | None = None
    result: ResultRecord | None = None
    score_ms: int | None = None
    tries: int | None = None
    problem: str | None = None
    progress: dict[str, Any] | None = None  # the latest progress a running job reported


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: str
    maxmemory_policy: str
    aof_enabled: bool
    save_schedule: str | None  # None when the server will not say (managed Redis, ACLs)


@dataclass(frozen=True, slots=True)
class CommandStats:
    """The server's command counter (all clients, commands inside scripts included) and uptime."""

    total_commands: int
    uptime_s: int


class QueueBackend(Protocol):
    # -- lifecycle and health --------------------------------------------------------------
    @property
    def state(self) -> LinkState: ...

    @property
    def usable(self) -> bool: ...

    async def start(self) -> LinkState: ...

    async def aclose(self) -> None: ...

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None: ...

    async def wait_until_up(self) -> None: ...

    def report_failure(self, exc: BaseException) -> None: ...

    # -- write side --------------------------------------------------------------------------
    async def enqueue(
        self,
        queue: str,
        *,
        job_id: str,
        name: str,
        kwargs: dict[str, Any],
        defer_by_s: float | None = None,
        traceparent: str | None = None,
    ) -> EnqueueReply: ...

    async def enqueue_many(
        self, queue: str, jobs: Sequence[NewJob], *, batch_size: int
    ) -> list[EnqueueReply]: ...

    async def claim(
        self,
        queues: Sequence[ClaimQueue],
        *,
        limit: int,
        lock_ms: int,
        token: str,
        now_ms: int | None = None,
        health: str | None = None,
        health_ttl_ms: int = 0,
        health_queue: str | None = None,
    ) -> ClaimBatch: ...

    async def finish(
        self, done: Sequence[Finished], *, keep_result_ms: int, capped: frozenset[str] = frozenset()
    ) -> None: ...

    async def release(self, queues: Sequence[str], claimed_score: int, token: str) -> int: ...

    async def extend(self, jobs: Sequence[tuple[str, str]], token: str, lock_ms: int) -> int: ...

    async def withdraw(self, queue: str, job_id: str) -> WithdrawOutcome: ...

    async def presence(self, job_ids: Sequence[str]) -> list[Presence]: ...

    async def wait_for_wake(self, queues: Sequence[str], timeout_s: float) -> bool: ...

    async def repair_wake(self, queue: str) -> bool: ...

    # -- flow control ------------------------------------------------------------------------
    async def cancel(
        self, queues: Sequence[str], job_id: str, cancelled_result: bytes, *, keep_result_ms: int
    ) -> tuple[CancelOutcome, str | None]: ...

    async def cancel_requests(self, job_ids: Sequence[str]) -> set[str]: ...

    async def pause(self, queue: str) -> bool: ...

    async def resume(self, queue: str) -> bool: ...

    async def paused(self, queues: Sequence[str]) -> set[str]: ...

    async def write_progress(self, reports: Sequence[tuple[str, bytes]], *, ttl_ms: int) -> None: ...

    async def acquire(
        self, limits: Sequence[tuple[str, float, float]], jobs: Sequence[tuple[str, Sequence[int]]]
    ) -> list[int]: ...

    # -- read side ---------------------------------------------------------------------------
    async def counts(self, queue: str) -> QueueCounts: ...

    async def jobs(
        self, queue: str, state: JobState, *, offset: int = 0, limit: int = 50
    ) -> list[JobView]: ...

    async def job(self, queues: Sequence[str], job_id: str) -> JobView: ...

    async def result(self, job_id: str, *, despite_breaker: bool = False) -> ResultRecord | None: ...

    async def worker_snapshots(self) -> list[bytes]: ...

    async def server_info(self) -> ServerInfo: ...

    async def command_stats(self) -> CommandStats: ...

    # -- the runner's own bookkeeping --------------------------------------------------------
    async def publish_snapshot(self, worker_id: str, snapshot: bytes, ttl_ms: int) -> None: ...

    async def forget_worker(self, queue: str, worker_id: str) -> None: ...

    async def schedule_note(self, queue: str, job: str) -> int | None: ...

    async def set_schedule_note(self, queue: str, job: str, due_s: int, ttl_s: float) -> None: ...

    def batch_list(self, namespace: str, queue: str) -> BatchList: ...
