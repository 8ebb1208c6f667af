"""The queue backend on Redis: every job-state change is one Lua script (one round trip; a bulk
enqueue pipelines several in one write), every read a script or a short pipeline, all through
the link's breaker and timeouts.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
from redis.exceptions import ResponseError

from core.clock import epoch_ms
from core.codec import (
    CodecError,
    JobRecord,
    ResultRecord,
    Signature,
    decode_job,
    decode_result,
    encode_job,
    sign,
    verify,
)
from core.errors import NotSent, ReplyLost
from core.plugin import BatchList, ClaimedBatch
from settings import Settings
from worker.backend import keys, scripts
from worker.backend.grouped import GroupedScript
from worker.backend.link import LinkState, RedisLink, refused
from worker.backend.protocol import (
    CancelOutcome,
    ClaimBatch,
    ClaimedJob,
    ClaimQueue,
    CommandStats,
    EnqueueReply,
    Finished,
    JobState,
    JobView,
    NewJob,
    PoisonEntry,
    Presence,
    QueueCounts,
    ServerInfo,
    WithdrawOutcome,
)

__all__ = ["EXPIRES_EXTRA_MS", "RedisBackend"]

log = structlog.get_logger(__name__)

# arq's default: a queued job's record outlives its start time by a day.
EXPIRES_EXTRA_MS = 86_400_000
# Bytes of job records per write of a bulk enqueue: a write must drain within the socket
# timeout (0.25 s by default), also over a slow link to a managed Redis.
_WAVE_BYTES = 256 * 1024
# A worker snapshot lives 10 minutes; one older than that belongs to a worker that is gone.
_SNAPSHOT_TTL_MS = 600_000
# A cancel request outlives any lock by far: its worker reads it within a second or two.
_CANCEL_REQUEST_TTL_MS = 3_600_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _score(value: Any) -> int | None:
    """A score in whole ms; None for '' (no such score) and for anything not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def _progress(raw: Any) -> dict[str, Any] | None:
    """A progress report as written by a worker; None for anything else."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("fraction"), int | float):
        return None
    message = value.get("message")
    return {
        "fraction": min(max(float(value["fraction"]), 0.0), 1.0),
        "message": message[:200] if isinstance(message, str) else None,
        "at_ms": value.get("at_ms") if isinstance(value.get("at_ms"), int) else None,
    }


def _poison(raw_id: Any, score: Any, queue: str) -> PoisonEntry:
    raw = raw_id if isinstance(raw_id, bytes) else str(raw_id).encode()
    shown_score = _text(score)
    if _score(score) is None:
        reason = f"the queue score {shown_score} is not a time"
    elif len(raw) > keys.MAX_JOB_ID_LENGTH:
        reason = f"the job id is {len(raw)} bytes, over the {keys.MAX_JOB_ID_LENGTH}-byte limit"
    else:
        reason = "the job id has characters outside letters, digits and _ . : @ / + = -"
    return PoisonEntry(raw, shown_score, reason, queue)


class RedisBackend:
    """`QueueBackend` over one `RedisLink`. `role` names the user in the link's log lines."""

    def __init__(self, settings: Settings, *, role: str, socket_timeout: float | None = None) -> None:
        self.settings = settings
        self.link = RedisLink(settings, role=role, socket_timeout=socket_timeout)
        # Job and result records are signed with the first key and checked against all of them.
        self._keys = settings.signing_keys
        self._accept_unsigned = settings.job_signing_accept_unsigned
        # Concurrent single enqueues share one pipelined write (see `grouped`).
        self._enqueues = GroupedScript(self.link, scripts.ENQUEUE)
        # A worker's claims and outcome writes, one at a time each, on connections of their own.
        self._claim_lane = self.link.lane()
        self._finish_lane = self.link.lane()

    def _sign(self, record: bytes, job_id: str) -> bytes:
        return sign(record, job_id, self._keys[0]) if self._keys else record

    def _untrusted(self, record: bytes, job_id: str) -> str | None:
        """Why a record read from Redis must not be trusted (signing on), or None."""
        if not self._keys:
            return None
        signature = verify(record, job_id, self._keys)
        if signature is Signature.VALID or (signature is Signature.MISSING and self._accept_unsigned):
            return None
        if signature is Signature.MISSING:
            return "it is not signed, and JOB_SIGNING_KEYS is set (JOB_SIGNING_ACCEPT_UNSIGNED is off)"
        return "its signature does not verify with any key in JOB_SIGNING_KEYS"

    # -- lifecycle and health --------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self.link.state

    @property
    def usable(self) -> bool:
        return self.link.usable

    async def start(self) -> LinkState:
        return await self.link.start()

    async def aclose(self) -> None:
        await self._enqueues.aclose()
        await self.link.aclose()

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        self.link.on_up(callback)

    async def wait_until_up(self) -> None:
        await self.link.wait_until_up()

    def report_failure(self, exc: BaseException) -> None:
        self.link.report_failure(exc)

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
    ) -> EnqueueReply:
        """Queue one job atomically in one round trip, shared with concurrent enqueues (raises
        `NotSent`, `ReplyLost` or `BackendRefused`)."""
        now_ms = epoch_ms()
        score = now_ms + int((defer_by_s or 0) * 1000)
        keys_ = (keys.job_key(job_id), keys.result_key(job_id), queue, keys.wake_key(queue))
        record = self._sign(encode_job(name, kwargs, enqueue_ms=now_ms, traceparent=traceparent), job_id)
        args = (record, score - now_ms + EXPIRES_EXTRA_MS, score, job_id)
        reply = await self._enqueues.call(keys_, args)
        return EnqueueReply.QUEUED if reply == 1 else EnqueueReply.DUPLICATE

    async def enqueue_many(
        self, queue: str, jobs: Sequence[NewJob], *, batch_size: int
    ) -> list[EnqueueReply]:
        """Queue many jobs in pipelined script calls of `batch_size` jobs; one reply per job.

        The calls go out in writes of about `_WAVE_BYTES` each, one after the other: a single
        write of a 100,000-job backlog (20 MB) cannot drain within the socket timeout, and a
        timed-out write would send every job of the call to the fallback. A wave that fails
        leaves the ones after it unsent (`NOT_SENT`), and the ones before it queued.
        """
        if not self.link.usable:
            return [EnqueueReply.NOT_SENT] * len(jobs)
        head = (keys.JOB_PREFIX, keys.RESULT_PREFIX, epoch_ms(), EXPIRES_EXTRA_MS)
        chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
        waves: list[list[tuple[tuple[str, str], tuple[Any, ...]]]] = [[]]
        wave_bytes = 0
        for chunk in chunks:
            args: list[Any] = list(head)
            for job in chunk:
                record = self._sign(job.record, job.job_id)
                args += (job.job_id, record, job.score)
                wave_bytes += len(record) + len(job.job_id) + 32
            if waves[-1] and wave_bytes > _WAVE_BYTES:
                waves.append([])
                wave_bytes = 0
            waves[-1].append(((queue, keys.wake_key(queue)), tuple(args)))
        replies: list[Any] = []
        for wave in waves:
            try:
                replies += await self.link.scripts(scripts.ENQUEUE_MANY, wave)
            except NotSent:
                break
            except ReplyLost as exc:
                replies += exc.replies
                replies += [None] * (len(wave) - len(exc.replies))  # sent, outcome unknown
                break
        outcomes: list[EnqueueReply] = []
        for i, chunk in enumerate(chunks):
            if i >= len(replies):  # its wave was never sent
                outcomes += [EnqueueReply.NOT_SENT] * len(chunk)
                continue
            reply = replies[i]
            if isinstance(reply, list):
                outcomes += [EnqueueReply.QUEUED if r == 1 else EnqueueReply.DUPLICATE for r in reply]
            elif isinstance(reply, ResponseError):
                # Refused (OOM, NOPERM...): a configuration problem, not an outage.
                raise refused("the bulk enqueue", reply)
            else:
                outcomes += [EnqueueReply.UNKNOWN] * len(chunk)
        return outcomes

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
    ) -> ClaimBatch:
        """Claim up to `limit` due jobs from `queues` (visited in order) with their records and
        try counts, in one round trip. `health`, when given, is written to `health_queue`'s arq
        health key (default: the first queue's).

        Claimed jobs are scored `now_ms + lock_ms`, which is how a lost claim is found again.
        Entries that are not ours come back in `poison`, already removed from the queue.
        """
        health_queue = health_queue or queues[0].key
        keys_: list[str] = [keys.health_check_key(health_queue)]
        per_queue: list[int] = []
        for q in queues:
            keys_ += (q.key, keys.quarantine_key(q.key), keys.paused_key(q.key), keys.running_key(q.key))
            per_queue += (-1 if q.room is None else q.room, q.global_cap or 0)
        keys_.append(health_queue)
        args = (
            now_ms or epoch_ms(),
            lock_ms,
            limit,
            token,
            keys.JOB_PREFIX,
            keys.IN_PROGRESS_PREFIX,
            keys.RETRY_PREFIX,
            health or "",
            health_ttl_ms,
            keys.ENDED_PREFIX,
            keys.MAX_JOB_ID_LENGTH,
            *per_queue,
        )
        flat = await self.link.script(scripts.CLAIM, keys_, args, lane=self._claim_lane)
        states = _text(flat[2])
        poisoned = int(flat[3])
        poison = [
            _poison(flat[i + 1], flat[i + 2], queues[int(flat[i]) - 1].key)
            for i in range(4, 4 + 3 * poisoned, 3)
        ]
        jobs = []
        for i in range(4 + 3 * poisoned, len(flat), 6):
            claims, ended = int(flat[i + 4]), int(flat[i + 5])
            # The id passed the claim's rule (ASCII only), so it decodes.
            job_id, record = _text(flat[i + 1]), flat[i + 3]
            untrusted = self._untrusted(record, job_id) if record is not None else None
            queue = queues[int(flat[i]) - 1].key
            score = _score(flat[i + 2]) or 0
            jobs.append(ClaimedJob(job_id, score, record, ended + 1, claims - 1 - ended, untrusted, queue))
        return ClaimBatch(
            jobs,
            bool(flat[0]),
            _score(flat[1]),
            poison,
            paused=frozenset(q.key for q, state in zip(queues, states, strict=True) if state == "p"),
            capped=frozenset(q.key for q, state in zip(queues, states, strict=True) if state == "c"),
        )

    async def finish(
        self, done: Sequence[Finished], *, keep_result_ms: int, capped: frozenset[str] = frozenset()
    ) -> None:
        """Record a batch of finished attempts, of any of the worker's queues, in one round trip
        (safe to repeat). A finished job of a `capped` queue frees a slot: workers are woken."""
        order: dict[str, int] = {}
        for item in done:
            order.setdefault(item.queue, len(order) + 1)
        keys_: list[str] = []
        for queue in order:
            keys_ += (queue, keys.wake_key(queue), keys.running_key(queue))
        args: list[Any] = [
            keep_result_ms,
            keys.JOB_PREFIX,
            keys.IN_PROGRESS_PREFIX,
            keys.RETRY_PREFIX,
            keys.RESULT_PREFIX,
            keys.ENDED_PREFIX,
            len(order),
            *("1" if queue in capped else "0" for queue in order),
        ]
        for item in done:
            q = order[item.queue]
            if item.run_again_at_ms is not None:
                op = "d" if item.deferred else "c" if item.interrupted else "r"
                args += (op, q, item.job_id, item.run_again_at_ms)
            else:
                args += ("f", q, item.job_id, self._sign(item.result or b"{}", item.job_id))
        await self.link.script(scripts.FINISH, keys_, args, lane=self._finish_lane)

    async def release(self, queues: Sequence[str], claimed_score: int, token: str) -> int:
        """Undo a claim whose reply was lost (jobs scored `claimed_score`, locked by `token`)."""
        keys_ = [k for queue in queues for k in (queue, keys.running_key(queue))]
        args = (epoch_ms(), claimed_score, keys.IN_PROGRESS_PREFIX, keys.RETRY_PREFIX, token)
        return int(await self.link.script(scripts.RELEASE, keys_, args))

    async def extend(self, jobs: Sequence[tuple[str, str]], token: str, lock_ms: int) -> int:
        """Push back the locks this token still holds on `jobs` ((queue, id) pairs), and the
        jobs' queue scores with them."""
        order: dict[str, int] = {}
        args: list[Any] = [epoch_ms(), lock_ms, keys.IN_PROGRESS_PREFIX, token]
        for queue, job_id in jobs:
            args += (order.setdefault(queue, len(order) + 1), job_id)
        keys_ = [k for queue in order for k in (queue, keys.running_key(queue))]
        return int(await self.link.script(scripts.EXTEND, keys_, args))

    async def withdraw(self, queue: str, job_id: str) -> WithdrawOutcome:
        """Remove a queued job that no worker has started."""
        keys_ = (queue, keys.job_key(job_id), keys.in_progress_key(job_id), keys.result_key(job_id))
        reply = await self.link.script(scripts.WITHDRAW, keys_, (job_id,))
        return {1: WithdrawOutcome.WITHDRAWN, 0: WithdrawOutcome.NEVER_ARRIVED}.get(
            reply, WithdrawOutcome.ALREADY_STARTED
        )

    async def presence(self, job_ids: Sequence[str]) -> list[Presence]:
        """Per id: finished (result kept), pending (queued or running), or unknown to Redis."""
        if not job_ids:
            return []
        prefixes = (keys.JOB_PREFIX, keys.IN_PROGRESS_PREFIX, keys.RESULT_PREFIX)
        return [Presence(int(v)) for v in await self.link.script(scripts.PRESENCE, (), (*prefixes, *job_ids))]

    async def wait_for_wake(self, queues: Sequence[str], timeout_s: float) -> bool:
        return await self.link.wait_for_wake([keys.wake_key(q) for q in queues], timeout_s)

    async def repair_wake(self, queue: str) -> bool:
        """Make the wake key a sorted set with one member again; True if it was not."""
        return bool(await self.link.script(scripts.REPAIR_WAKE, (keys.wake_key(queue),), ()))

    # -- flow control ------------------------------------------------------------------------

    async def cancel(
        self, queues: Sequence[str], job_id: str, cancelled_result: bytes, *, keep_result_ms: int
    ) -> tuple[CancelOutcome, str | None]:
        """Cancel a job wherever it is in `queues`: removed if it waits (with `cancelled_result`
        kept as its result), a cancel request if it runs. Returns what happened and its queue."""
        args = (
            keys.JOB_PREFIX,
            keys.IN_PROGRESS_PREFIX,
            keys.RETRY_PREFIX,
            keys.RESULT_PREFIX,
            keys.ENDED_PREFIX,
            keys.CANCEL_PREFIX,
            job_id,
            self._sign(cancelled_result, job_id),
            max(keep_result_ms, 1),
            _CANCEL_REQUEST_TTL_MS,
        )
        outcome, index = await self.link.script(scripts.CANCEL, tuple(queues), args)
        found = {
            1: CancelOutcome.CANCELLED,
            2: CancelOutcome.REQUESTED,
            3: CancelOutcome.FINISHED,
        }.get(int(outcome), CancelOutcome.NOT_FOUND)
        return found, queues[int(index) - 1] if int(index) > 0 else None

    async def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these (running) jobs someone asked to cancel."""
        if not job_ids:
            return set()
        (flags,) = await self._replies(("MGET", *(keys.CANCEL_PREFIX + i for i in job_ids)))
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag is not None}

    async def pause(self, queue: str) -> bool:
        """Workers stop claiming from `queue` (jobs keep arriving). False if it was paused."""
        (was_set,) = await self._replies(("SET", keys.paused_key(queue), str(epoch_ms()), "NX"))
        return was_set is not None

    async def resume(self, queue: str) -> bool:
        """Workers claim from `queue` again, woken at once. False if it was not paused."""
        return bool(
            await self.link.script(scripts.RESUME, (keys.paused_key(queue), keys.wake_key(queue)), ())
        )

    async def paused(self, queues: Sequence[str]) -> set[str]:
        if not queues:
            return set()
        replies = await self._replies(*(("EXISTS", keys.paused_key(q)) for q in queues))
        return {q for q, found in zip(queues, replies, strict=True) if found}

    async def write_progress(self, reports: Sequence[tuple[str, bytes]], *, ttl_ms: int) -> None:
        """The latest progress of running jobs, one pipelined write for all of them."""
        if reports:
            await self._replies(*(("SET", keys.PROGRESS_PREFIX + i, r, "PX", ttl_ms) for i, r in reports))

    async def acquire(
        self, limits: Sequence[tuple[str, float, float]], jobs: Sequence[tuple[str, Sequence[int]]]
    ) -> list[int]:
        """Spend rate limits for `jobs` ((id, cost per limit)): per job 0 to start now, else the
        start time (ms) reserved for it. `limits` are (key, ms per unit, burst tolerance ms)."""
        args: list[Any] = [epoch_ms(), keys.RESERVED_PREFIX]
        for _, interval_ms, tolerance_ms in limits:
            args += (f"{interval_ms:.6f}", f"{tolerance_ms:.3f}")
        for job_id, costs in jobs:
            args += (job_id, *costs)
        reply = await self.link.script(scripts.ACQUIRE, tuple(key for key, _, _ in limits), args)
        return [int(r) for r in reply]

    # -- read side ---------------------------------------------------------------------------

    async def counts(self, queue: str) -> QueueCounts:
        """Jobs due, deferred and running. Running jobs sit in the queue too, scored at their
        lock's expiry; how many there are comes from the workers' snapshots (no per-job index)."""
        total, due = await self._replies(("ZCARD", queue), ("ZCOUNT", queue, "-inf", epoch_ms()))
        running = sum(len(ids) for ids in (await self._running_ids(queue)).values())
        return QueueCounts(queue, int(due), max(int(total) - int(due) - running, 0), running)

    async def jobs(self, queue: str, state: JobState, *, offset: int = 0, limit: int = 50) -> list[JobView]:
        """A page of jobs in `state`: queued and deferred by start time, running as the workers'
        latest snapshots list them (at most 10 s old while they work). Finished jobs are not
        indexed (that would cost commands on every job): look one up by id with `job()`; those
        that failed for good are the ledger's dead letters."""
        if state is JobState.IN_PROGRESS:
            ids = sorted(i for ids in (await self._running_ids(queue)).values() for i in ids)
            page = ids[offset : offset + limit]
            if not page:
                return []
            (records,) = await self._replies(("MGET", *(keys.job_key(i) for i in page)))
            return [
                self._pending_view(queue, i, raw, None, state) for i, raw in zip(page, records, strict=True)
            ]
        if state is JobState.QUEUED:
            low, high = "-inf", str(epoch_ms())
        elif state is JobState.DEFERRED:
            low, high = f"({epoch_ms()}", "+inf"
        else:
            raise ValueError(
                f"jobs in state {state.value!r} are not listed: look one up by id, or read the dead letters"
            )
        flat = await self.link.script(scripts.PAGE, (queue,), (low, high, offset, limit, keys.JOB_PREFIX))
        views = [
            self._pending_view(queue, _text(flat[i]), flat[i + 2], int(float(flat[i + 1])), state)
            for i in range(0, len(flat), 3)
        ]
        if state is JobState.DEFERRED:
            # Running jobs share those scores; they are listed under IN_PROGRESS.
            running = await self._running_among([v.job_id for v in views])
            views = [v for v in views if v.job_id not in running]
        return views

    async def job(self, queues: Sequence[str], job_id: str) -> JobView:
        """One job, looked for in `queues` (its result and locks are per id)."""
        args = (
            keys.JOB_PREFIX,
            keys.IN_PROGRESS_PREFIX,
            keys.RETRY_PREFIX,
            keys.RESULT_PREFIX,
            job_id,
            keys.PROGRESS_PREFIX,
        )
        record, result, lock, tries, score, index, progress_raw = await self.link.script(
            scripts.INSPECT, tuple(queues), args
        )
        queue = queues[int(index) - 1] if int(index) > 0 else queues[0]
        try_count = int(tries) if tries is not None and _text(tries).isdigit() else None
        score_ms = int(float(score)) if score is not None else None
        if result is not None and (untrusted := self._untrusted(result, job_id)) is not None:
            problem = f"the result in Redis is not trusted: {untrusted}"
            return JobView(
                job_id, JobState.FAILED, queue, score_ms=score_ms, tries=try_count, problem=problem
            )
        if result is not None:
            view = self._finished_view(queue, job_id, result, score_ms)
            if view.result is not None and view.result.queue:
                queue = view.result.queue  # it left its queue: the result says which it was
            return JobView(
                view.job_id, view.state, queue, view.record, view.result, score_ms, try_count, view.problem
            )
        if record is None and lock is None:
            return JobView(job_id, JobState.NOT_FOUND, queue, tries=try_count)
        if lock is not None:
            state = JobState.IN_PROGRESS
        elif score_ms is not None and score_ms > epoch_ms():
            state = JobState.DEFERRED
        else:
            state = JobState.QUEUED
        view = self._pending_view(queue, job_id, record, score_ms, state)
        progress = _progress(progress_raw) if state is JobState.IN_PROGRESS else None
        return JobView(job_id, state, queue, view.record, None, score_ms, try_count, view.problem, progress)

    async def result(self, job_id: str, *, despite_breaker: bool = False) -> ResultRecord | None:
        """The job's result record, or None. `despite_breaker` reads it even while the breaker is
        open (one attempt, bounded by the timeouts; the breaker is left to its probe).
        `CodecError` when it is not one we wrote, or, signing on, not signed by a known key (so
        nobody reads a forged result)."""
        if despite_breaker and not self.link.usable:
            (raw,) = await self.link.one_off([("GET", keys.result_key(job_id))])
            if isinstance(raw, ResponseError):
                raise refused("GET", raw)
        else:
            raw = await self.link.command("GET", keys.result_key(job_id))
        if raw is None:
            return None
        untrusted = self._untrusted(raw, job_id)
        if untrusted is not None:
            raise CodecError(f"the result in Redis is not trusted: {untrusted}", "UnverifiedResult")
        return decode_result(raw, job_id)

    async def worker_snapshots(self) -> list[bytes]:
        """Every live worker's latest snapshot (raw JSON), without scanning the keyspace."""
        cutoff = epoch_ms() - _SNAPSHOT_TTL_MS
        (ids,) = await self._replies(("ZRANGEBYSCORE", keys.WORKERS_KEY, cutoff, "+inf"))
        if not ids:
            return []
        (raw,) = await self._replies(("MGET", *(keys.worker_stats_key(_text(i)) for i in ids)))
        return [bytes(r) for r in raw if r is not None]

    async def _running_ids(self, queue: str) -> dict[str, list[str]]:
        """Per live worker of `queue`, the ids of the jobs its latest snapshot says it runs."""
        out: dict[str, list[str]] = {}
        for raw in await self.worker_snapshots():
            try:
                snapshot = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(snapshot, dict):
                continue
            by_queue = snapshot.get("running_by_queue")
            ids = by_queue.get(queue) if isinstance(by_queue, dict) else None
            if ids is None and snapshot.get("queue") == queue:
                ids = snapshot.get("running_ids")
            if isinstance(ids, list):
                out[str(snapshot.get("worker"))] = [i for i in ids if isinstance(i, str)]
        return out

    async def server_info(self) -> ServerInfo:
        """The server's version and durability settings, read whatever the breaker says (for
        doctor: a failure raises with the underlying error)."""
        info_text, save = await self.link.one_off([("INFO",), ("CONFIG", "GET", "save")])
        if isinstance(info_text, ResponseError):
            raise refused("INFO", info_text)
        fields = dict(
            line.split(":", 1)
            for line in _text(info_text).splitlines()
            if ":" in line and not line.startswith("#")
        )
        schedule: str | None = None
        if isinstance(save, list) and len(save) == 2:
            schedule = _text(save[1])
        return ServerInfo(
            version=fields.get("redis_version", "?"),
            maxmemory_policy=fields.get("maxmemory_policy", "noeviction"),
            aof_enabled=fields.get("aof_enabled", "0").strip() == "1",
            save_schedule=schedule,
        )

    async def command_stats(self) -> CommandStats:
        """Commands the server has processed and its uptime, from one INFO through the breaker
        (the ops dashboard turns two readings into commands per day)."""
        (info_text,) = await self._replies(("INFO",))
        fields = dict(line.split(":", 1) for line in _text(info_text).splitlines() if ":" in line)
        numbers = {k: int(v) for k, v in fields.items() if v.strip().isdigit()}
        return CommandStats(numbers.get("total_commands_processed", 0), numbers.get("uptime_in_seconds", 0))

    # -- the runner's own bookkeeping --------------------------------------------------------

    async def publish_snapshot(self, worker_id: str, snapshot: bytes, ttl_ms: int) -> None:
        await self._replies(
            ("SET", keys.worker_stats_key(worker_id), snapshot, "PX", ttl_ms),
            ("ZADD", keys.WORKERS_KEY, epoch_ms(), worker_id),
            ("ZREMRANGEBYSCORE", keys.WORKERS_KEY, "-inf", epoch_ms() - _SNAPSHOT_TTL_MS),
        )

    async def forget_worker(self, queue: str, worker_id: str) -> None:
        """A stopping worker's health key and snapshot go with it."""
        await self._replies(
            ("DEL", keys.health_check_key(queue), keys.worker_stats_key(worker_id)),
            ("ZREM", keys.WORKERS_KEY, worker_id),
        )

    async def schedule_note(self, queue: str, job: str) -> int | None:
        """The due time (epoch s) of the latest queued run of `job`; None when there is no note,
        or one we did not write (it is then overwritten by the next run's note)."""
        raw = await self.link.command("GET", keys.schedule_key(queue, job))
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            log.warning("ignoring a schedule note that is not a time", job=job, note=_text(raw)[:60])
            return None

    async def set_schedule_note(self, queue: str, job: str, due_s: int, ttl_s: float) -> None:
        await self.link.command(
            "SET", keys.schedule_key(queue, job), str(due_s), "PX", max(1, int(ttl_s * 1000))
        )

    def batch_list(self, namespace: str, queue: str) -> BatchList:
        return RedisBatchList(self.link, namespace, queue)

    # -- helpers -------------------------------------------------------------------------------

    async def _replies(self, *commands: tuple[Any, ...]) -> list[Any]:
        replies = await self.link.execute(commands)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, ResponseError):
                raise refused(str(command[0]), reply)
        return replies

    async def _running_among(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        replies = await self._replies(*(("EXISTS", keys.in_progress_key(i)) for i in job_ids))
        return {i for i, found in zip(job_ids, replies, strict=True) if found}

    @staticmethod
    def _pending_view(
        queue: str, job_id: str, raw: bytes | None, score: int | None, state: JobState
    ) -> JobView:
        record: JobRecord | None = None
        problem = None
        if raw is None:
            problem = "the job's record has expired"
        else:
            try:
                record = decode_job(raw)
            except CodecError as exc:
                problem = str(exc)
        return JobView(job_id, state, queue, record=record, score_ms=score, problem=problem)

    @staticmethod
    def _finished_view(queue: str, job_id: str, raw: bytes | None, score: int | None) -> JobView:
        if raw is None:
            return JobView(job_id, JobState.COMPLETE, queue, score_ms=score, problem="the result has expired")
        try:
            result = decode_result(raw, job_id)
        except CodecError as exc:
            return JobView(job_id, JobState.FAILED, queue, score_ms=score, problem=str(exc))
        state = JobState.COMPLETE if result.success else JobState.FAILED
        record = JobRecord(result.name, result.kwargs, result.enqueue_ms, result.job_try, result.traceparent)
        return JobView(
            job_id, state, queue, record=record, result=result, score_ms=score, tries=result.job_try
        )


class RedisBatchList:
    """A plug-in's reliable list: `mb:<namespace>:<queue>:events`, with its in-flight batches
    under `...:inflight` (a sorted set of lease deadlines) and `...:batch:<id>`, and items that
    could not be processed kept in `...:dead`."""

    def __init__(self, link: RedisLink, namespace: str, queue: str) -> None:
        self._link = link
        self._source = keys.plugin_key(namespace, queue, "events")
        self._inflight = keys.plugin_key(namespace, queue, "inflight")
        self._prefix = keys.plugin_key(namespace, queue, "batch:")
        self._dead = keys.plugin_key(namespace, queue, "dead")

    async def push(self, items: Sequence[bytes]) -> int:
        return int(await self._link.script(scripts.LIST_PUSH, (self._source,), tuple(items)))

    async def claim(self, *, max_bytes: int, max_items: int, lease_s: float) -> ClaimedBatch | None:
        batch_id = uuid.uuid4().hex
        deadline_ms = int((time.time() + lease_s) * 1000)
        keys_ = (self._source, self._inflight, self._prefix + batch_id)
        items = await self._link.script(
            scripts.LIST_CLAIM, keys_, (max_bytes, max_items, deadline_ms, batch_id)
        )
        return ClaimedBatch([bytes(i) for i in items], batch_id) if items else None

    async def ack(self, batch_id: str, *, dead: Sequence[bytes] = ()) -> None:
        keys_ = (self._inflight, self._prefix + batch_id, self._dead)
        await self._link.script(scripts.LIST_ACK, keys_, (batch_id, *dead))

    async def give_back(self, batch_id: str) -> None:
        await self._link.script(
            scripts.LIST_RETURN, (self._source, self._inflight), (self._prefix, -1, 1, batch_id)
        )

    async def give_back_expired(self, *, limit: int = 100) -> int:
        args = (self._prefix, epoch_ms(), limit)
        return int(await self._link.script(scripts.LIST_RETURN, (self._source, self._inflight), args))
