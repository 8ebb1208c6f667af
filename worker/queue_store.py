"""Job-state operations on Redis: enqueue (one or many), claim, finish, release, withdraw.

Each operation is one script from `worker.scripts` (one round trip; a bulk enqueue pipelines
several in one write). Errors come from `RedisLink`: `NotSent` when nothing reached Redis,
`ReplyLost` when the outcome is unknown; either way the breaker is open afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from worker import keys, scripts
from worker.redis_link import NotSent, RedisLink, ReplyLost

__all__ = [
    "ClaimBatch",
    "ClaimedJob",
    "EnqueueOutcome",
    "Finished",
    "NewJob",
    "QueueStore",
    "WithdrawOutcome",
    "epoch_ms",
    "job_record",
]

# arq's default: a queued job's record outlives its start time by a day.
EXPIRES_EXTRA_MS = 86_400_000


class EnqueueOutcome(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    NOT_SENT = "not_sent"  # certainly not in Redis (bulk only; `enqueue` raises NotSent)
    UNKNOWN = "unknown"  # sent, reply lost (bulk only; `enqueue` raises ReplyLost)


class WithdrawOutcome(StrEnum):
    WITHDRAWN = "withdrawn"
    NEVER_ARRIVED = "never_arrived"
    ALREADY_STARTED = "already_started"


@dataclass(frozen=True, slots=True)
class NewJob:
    job_id: str
    record: bytes  # arq's job record, JSON
    score: int  # start time, ms since the epoch


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: str
    score: int
    record: bytes | None  # None when the job key expired
    job_try: int


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    jobs: list[ClaimedJob]
    more: bool  # more jobs may be due now
    next_due_ms: int | None  # earliest score not yet due (deferred, retrying or running)


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished attempt to record: a result record to keep, or a new score to run again at."""

    job_id: str
    result: bytes | None = None
    run_again_at_ms: int | None = None


def job_record(name: str, payload: dict[str, Any], enqueue_ms: int, job_try: int | None = None) -> bytes:
    """arq's job record (function, args, kwargs, try, enqueue time) as JSON."""
    return orjson.dumps({"t": job_try, "f": name, "a": [], "k": payload, "et": enqueue_ms})


def epoch_ms() -> int:
    return int(time.time() * 1000)


class QueueStore:
    """The operations on one queue, over a `RedisLink`."""

    def __init__(self, link: RedisLink, queue: str) -> None:
        self.link = link
        self.queue = queue
        self.wake_key = keys.wake_key(queue)

    async def enqueue(
        self, *, job_id: str, name: str, payload: dict[str, Any], defer_by_s: float | None = None
    ) -> EnqueueOutcome:
        """Queue one job atomically in one round trip (raises `NotSent` or `ReplyLost`)."""
        if not self.link.usable:
            raise NotSent(f"Redis is {self.link.state.value}")
        now_ms = epoch_ms()
        score = now_ms + int((defer_by_s or 0) * 1000)
        keys_ = (keys.job_key(job_id), keys.result_key(job_id), self.queue, self.wake_key)
        args = (job_record(name, payload, now_ms), score - now_ms + EXPIRES_EXTRA_MS, score, job_id)
        reply = await self.link.run_script(scripts.ENQUEUE, keys_, args)
        return EnqueueOutcome.QUEUED if reply == 1 else EnqueueOutcome.DUPLICATE

    async def enqueue_many(self, jobs: Sequence[NewJob], *, batch_size: int) -> list[EnqueueOutcome]:
        """Queue many jobs in pipelined script calls of `batch_size` jobs; one outcome per job."""
        if not self.link.usable:
            return [EnqueueOutcome.NOT_SENT] * len(jobs)
        head = (keys.job_key(""), keys.result_key(""), epoch_ms(), EXPIRES_EXTRA_MS)
        chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
        calls = []
        for chunk in chunks:
            args: list[Any] = list(head)
            for job in chunk:
                args += (job.job_id, job.record, job.score)
            calls.append(((self.queue, self.wake_key), tuple(args)))
        try:
            replies = await self.link.run_scripts(scripts.ENQUEUE_MANY, calls)
        except NotSent:
            return [EnqueueOutcome.NOT_SENT] * len(jobs)
        except ReplyLost as exc:
            replies = exc.replies
        outcomes: list[EnqueueOutcome] = []
        for i, chunk in enumerate(chunks):
            reply = replies[i] if i < len(replies) else None
            if isinstance(reply, list):
                outcomes += [EnqueueOutcome.QUEUED if r == 1 else EnqueueOutcome.DUPLICATE for r in reply]
            elif isinstance(reply, Exception) and i < len(replies):
                raise reply  # refused (OOM, NOPERM...): a configuration problem, not an outage
            else:
                outcomes += [EnqueueOutcome.UNKNOWN] * len(chunk)
        return outcomes

    async def claim(
        self,
        *,
        limit: int,
        lock_ms: int,
        token: str,
        now_ms: int | None = None,
        health: str | None = None,
        health_ttl_ms: int = 0,
    ) -> ClaimBatch:
        """Claim up to `limit` due jobs with their records and try counts, in one round trip.

        Claimed jobs are scored `now_ms + lock_ms`, which is how a lost claim is found again.
        """
        keys_ = (self.queue, keys.health_check_key(self.queue))
        args = (
            now_ms or epoch_ms(),
            lock_ms,
            limit,
            token,
            keys.job_key(""),
            keys.in_progress_key(""),
            keys.retry_key(""),
            health or "",
            health_ttl_ms,
        )
        flat = await self.link.run_script(scripts.CLAIM, keys_, args)
        jobs = [
            ClaimedJob(flat[i].decode(), int(float(flat[i + 1])), flat[i + 2], int(flat[i + 3]))
            for i in range(2, len(flat), 4)
        ]
        next_due = int(float(flat[1])) if flat[1] else None
        return ClaimBatch(jobs, bool(flat[0]), next_due)

    async def finish(self, done: Sequence[Finished], *, keep_result_ms: int) -> None:
        """Record a batch of finished attempts in one round trip (safe to repeat)."""
        args: list[Any] = [
            keep_result_ms,
            keys.job_key(""),
            keys.in_progress_key(""),
            keys.retry_key(""),
            keys.result_key(""),
        ]
        for item in done:
            if item.run_again_at_ms is not None:
                args += ("r", item.job_id, item.run_again_at_ms)
            else:
                args += ("f", item.job_id, item.result or b"")
        await self.link.run_script(scripts.FINISH, (self.queue, self.wake_key), tuple(args))

    async def release_claims(self, claimed_score: int, token: str) -> int:
        """Undo a claim whose reply was lost (jobs scored `claimed_score`, locked by `token`)."""
        args = (epoch_ms(), claimed_score, keys.in_progress_key(""), keys.retry_key(""), token)
        return int(await self.link.run_script(scripts.RELEASE, (self.queue,), args))

    async def extend_claims(self, job_ids: list[str], token: str, lock_ms: int) -> int:
        """Push back the locks this token still holds (and the jobs' queue scores with them)."""
        args = (epoch_ms(), lock_ms, keys.in_progress_key(""), token, *job_ids)
        return int(await self.link.run_script(scripts.EXTEND, (self.queue,), args))

    async def withdraw_if_pending(self, job_id: str) -> WithdrawOutcome:
        """Remove a queued job that no worker has started."""
        keys_ = (self.queue, keys.job_key(job_id), keys.in_progress_key(job_id), keys.result_key(job_id))
        reply = await self.link.run_script(scripts.WITHDRAW, keys_, (job_id,))
        return {1: WithdrawOutcome.WITHDRAWN, 0: WithdrawOutcome.NEVER_ARRIVED}.get(
            reply, WithdrawOutcome.ALREADY_STARTED
        )
