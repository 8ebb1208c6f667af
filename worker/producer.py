"""The producer shim the web app calls to enqueue jobs.

    async with Producer(settings) as producer:
        handle = await producer.enqueue(ping, message="hello")
        result = await handle.result(timeout=5)

While Redis is usable a job goes to Redis in one round trip. When Redis is down, unreachable or
not configured, the same job runs inline at once through the worker's own execution path, and
`handle.mode` says which happened. The breaker in `RedisLink` makes later calls skip the network
until Redis answers again; queueing then resumes by itself.

At-least-once: if the enqueue command went out but the reply was lost (a blackholed network),
we cannot know whether the job landed. We run it inline (the caller never waits on a dead
Redis) and, once Redis answers, withdraw the queued copy if no worker has started it. A worker
may start it first; jobs are idempotent by job id, so the effect still happens once.

Analytics events take another road, with no job per event (see `worker.events`):

    await producer.track_event(type="stream", artist_id="a1", track_id="t1", source="spotify")
    result = await producer.track_events(events)  # accepted / refused counts, with reasons
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, cast

import asyncpg
import structlog

from jobs import REGISTRY
from jobs.analytics.queue import EVENT_QUEUE
from jobs.context import JobContext
from jobs.deps import Deps
from jobs.enqueue import ENQUEUE
from jobs.enqueue import EnqueueOutcome as Outcome
from jobs.registry import JobDefinition, Registry
from settings import Settings, load_settings
from worker.cache import make_cache
from worker.errors import EnqueueError, JobFailed, JobValidationError
from worker.events import EventIngest, TrackResult
from worker.journal import Journal
from worker.metrics import Metrics
from worker.queue_store import EnqueueOutcome, NewJob, QueueStore, WithdrawOutcome, job_record
from worker.redis_link import LinkState, NotSent, RedisLink, ReplyLost
from worker.runner import JobRunner
from worker.serializer import error_from_payload
from worker.spool import PG_DOWN_ERRORS, SpoolRelay, spool_job
from worker.status import job_status

__all__ = ["JobHandle", "Producer"]

log = structlog.get_logger("worker.producer")

P = ParamSpec("P")
R = TypeVar("R")
Mode = Literal["queued", "inline", "spooled"]
JobRef = str | Callable[..., Any] | JobDefinition[Any, Any]


def _new_job_ids(count: int) -> list[str]:
    """`count` ids in `uuid4().hex`'s format from one read of the OS's randomness (3x faster)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # RFC 4122 variant
    hexed = raw.hex()
    return [hexed[i : i + 32] for i in range(0, 32 * count, 32)]


def _run_at(defer_by: float | None) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=defer_by or 0)


class JobHandle(Generic[R]):
    """What `enqueue` returns: the job id, where it went, and a way to wait for its result."""

    def __init__(
        self,
        job_id: str,
        name: str,
        mode: Mode,
        *,
        duplicate: bool = False,
        link: RedisLink | None = None,
        task: asyncio.Future[Any] | None = None,
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.mode = mode
        self.duplicate = duplicate
        self._link = link
        self._task = task

    def __repr__(self) -> str:
        dup = " duplicate" if self.duplicate else ""
        return f"<JobHandle {self.name} {self.job_id} mode={self.mode}{dup}>"

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def result(self, timeout: float | None = None) -> R:
        """The job's result; raises `JobFailed` if it failed and `TimeoutError` after `timeout` s."""
        if self._task is not None:
            value: R = await asyncio.wait_for(asyncio.shield(self._task), timeout)
            return value
        if self._link is None:
            raise RuntimeError("handle has neither a task nor a Redis link")
        return await self._poll_result(self._link, timeout)

    async def _poll_result(self, link: RedisLink, timeout: float | None) -> R:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            # A spooled job has no result until Redis is back and a worker has run it.
            record = await link.fetch_result(self.job_id) if link.usable else None
            if record is not None:
                if record.get("s"):
                    return cast(R, record.get("r"))
                error = error_from_payload(record.get("r")) or {
                    "type": "Error",
                    "message": str(record.get("r")),
                }
                raise JobFailed(self.job_id, error["type"], error["message"], error.get("kind", "permanent"))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.job_id} has no result after {timeout}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


class Producer:
    """Enqueue jobs to Redis, or run them inline when Redis is unusable. Use as `async with`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry = REGISTRY,
        link: RedisLink | None = None,
        deps: Deps | None = None,
    ) -> None:
        """`link` and `deps`, when given, are shared with their owner (a worker), who starts and
        closes them; otherwise the producer has its own."""
        self.settings = settings or load_settings()
        self.registry = registry
        self._owns_link = link is None
        self._owns_deps = deps is None
        self._link = link or RedisLink(self.settings, role="producer")
        self._store = QueueStore(self._link, self.settings.queue_name)
        self._deps = deps or Deps(self.settings, cache=make_cache(self.settings))
        self.metrics = Metrics()
        self.metrics.watch_breaker(lambda: not self._link.usable)
        self._runner = JobRunner(self.settings, self._deps, self.metrics)
        self.events = EventIngest(self.settings, self._link, self._runner, self.enqueue_by_name)
        if self._owns_deps:
            self._deps.provide(ENQUEUE, self.enqueue_by_name)  # follow-up jobs of inline runs
            self._deps.provide(EVENT_QUEUE, self.events.buffer)  # what an inline flush drains
        self._background: set[asyncio.Future[Any]] = set()
        self._background_slots = asyncio.Semaphore(self.settings.inline_max_background)
        self._ambiguous: set[str] = set()  # ids of jobs whose enqueue reply was lost
        self._relay_task: asyncio.Task[None] | None = None
        self._inline_count = 0

    @property
    def journal(self) -> Journal:
        return self._runner.journal

    @property
    def link(self) -> RedisLink:
        return self._link

    @property
    def inline_count(self) -> int:
        """How many jobs this producer ran inline because Redis was unusable."""
        return self._inline_count

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._link.on_up(self._withdraw_ambiguous)
        self._link.on_up(self._events_redis_back)
        if not self._owns_link:
            return  # the owner starts the link and reports how Redis is
        state = await self._link.start()
        if self._link.usable:
            log.info("Redis primary client connected, jobs are queued", url=self.settings.redis_url_redacted)
        else:
            log.warning("Redis not available, falling back to inline execution", redis=state.value)

    async def close(self) -> None:
        """Write buffered events, wait for background inline jobs, then release Redis and deps.

        Raises `EventsNotDelivered` if analytics events held in memory could not be written.
        """
        try:
            await self.events.close()
        finally:
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            await self._runner.journal.drain()
            if self._relay_task is not None:
                self._relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._relay_task
            if self._owns_link:
                await self._link.aclose()
            if self._owns_deps:
                await self._deps.aclose()

    # -- public API ------------------------------------------------------------------------------

    async def enqueue(
        self, job: Callable[Concatenate[JobContext, P], Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> JobHandle[R]:
        """Enqueue `job` with its keyword arguments, type-checked against its signature."""
        if args:
            raise TypeError("jobs take keyword arguments only")
        return await self.enqueue_job(job, kwargs)

    async def enqueue_job(
        self,
        job: JobRef,
        kwargs: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        defer_by: float | None = None,
        background: bool = False,
    ) -> JobHandle[Any]:
        """Enqueue by function, definition or registered name.

        `job_id` deduplicates: a second enqueue with the same id while the job or its result is
        in Redis creates nothing and returns a handle with `duplicate=True`. `defer_by` delays
        the start; a deferred job is never run early, so it is refused while Redis is down.
        With `background=True` an inline run returns at once and runs as a tracked task.
        """
        definition = self.registry.get(job)
        payload = definition.payload(kwargs or {}, max_bytes=self.settings.max_payload_bytes)
        definition.check_settings(self.settings)
        return await self._submit(definition, payload, job_id, defer_by, background)

    async def enqueue_in_transaction(
        self,
        conn: asyncpg.Connection,
        job: JobRef,
        kwargs: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        defer_by: float | None = None,
    ) -> JobHandle[Any]:
        """Enqueue as part of the caller's open transaction on `conn` (the outbox pattern).

        The job is written to the spool in that transaction; a relay queues it once the
        transaction commits. A rolled-back transaction leaves no job behind.
        """
        if not conn.is_in_transaction():
            raise EnqueueError(
                "enqueue_in_transaction needs a connection inside `async with conn.transaction()`"
            )
        definition = self.registry.get(job)
        definition.check_settings(self.settings)
        payload = definition.payload(kwargs or {}, max_bytes=self.settings.max_payload_bytes)
        job_id = job_id or uuid.uuid4().hex
        await self._spool(conn, definition, payload, job_id, defer_by)
        return JobHandle(job_id, definition.name, "spooled", link=self._link)

    async def status(self, job_id: str) -> dict[str, Any]:
        """Where the job is: spooled, queued, deferred, in_progress, complete, failed or dead."""
        return await job_status(self._link, job_id, self.settings.queue_name, self.journal)

    async def enqueue_json(
        self, job: JobRef, raw_args: str | bytes, *, job_id: str | None = None, inline: bool = False
    ) -> JobHandle[Any]:
        """Enqueue with arguments given as JSON text (the CLI); `inline=True` skips Redis."""
        definition = self.registry.get(job)
        payload = definition.payload_from_json(raw_args, max_bytes=self.settings.max_payload_bytes)
        definition.check_settings(self.settings)
        if inline:
            return await self._start_inline(definition, payload, job_id or uuid.uuid4().hex, background=False)
        return await self._submit(definition, payload, job_id, None, False)

    async def enqueue_by_name(self, job: str, kwargs: Mapping[str, Any], *, job_id: str) -> Outcome:
        """The `Enqueue` seam jobs reach through `ENQUEUE`: queue (or run inline) by name."""
        handle = await self.enqueue_job(job, kwargs, job_id=job_id)
        return "duplicate" if handle.duplicate else handle.mode

    async def track_event(self, **event: Any) -> str:
        """Record one analytics event (fields of `jobs.analytics.events.Event`); return its id.

        Raises `InvalidEvent` when refused. No job is queued: see `worker.events`.
        """
        return await self.events.track_one(event)

    async def track_events(self, events: Iterable[Mapping[str, Any]]) -> TrackResult:
        """Record analytics events; invalid ones are refused with reasons, the rest accepted."""
        return await self.events.track(events)

    async def enqueue_many(
        self,
        job: JobRef,
        kwargs_list: Iterable[Mapping[str, Any]],
        *,
        job_ids: Sequence[str] | None = None,
        defer_by: float | None = None,
        background: bool = False,
    ) -> list[JobHandle[Any]]:
        """Enqueue many jobs of one kind; one handle per job, in order.

        Every job is validated before anything is sent (one bad job refuses the whole call with
        `JobValidationError`). Then all go to Redis in pipelined script calls of
        `WORKER_BATCH_SIZE` jobs, in one write. Jobs Redis did not take fall back by the same
        rules as `enqueue_job` (deferred ones are refused with `EnqueueError`, whose `queued`
        lists the handles of those that did reach Redis). `job_ids` deduplicate as in
        `enqueue_job`, also within the call.
        """
        definition = self.registry.get(job)
        definition.check_settings(self.settings)
        limit = self.settings.max_payload_bytes
        payloads = [definition.payload(kwargs, max_bytes=limit) for kwargs in kwargs_list]
        ids = list(job_ids) if job_ids is not None else _new_job_ids(len(payloads))
        if len(ids) != len(payloads):
            raise JobValidationError(
                f"{definition.name}: {len(ids)} job ids for {len(payloads)} jobs; give one id per job"
            )
        outcomes = await self._send_many(definition.name, ids, payloads, defer_by)
        handles: list[JobHandle[Any] | None] = [None] * len(ids)
        left = []
        for i, outcome in enumerate(outcomes):
            if outcome in (EnqueueOutcome.QUEUED, EnqueueOutcome.DUPLICATE):
                duplicate = outcome is EnqueueOutcome.DUPLICATE
                handles[i] = JobHandle(
                    ids[i], definition.name, "queued", duplicate=duplicate, link=self._link
                )
            else:
                left.append(i)
                if outcome is EnqueueOutcome.UNKNOWN:
                    self._ambiguous.add(ids[i])
        if left:
            log.warning("bulk enqueue falling back", job=definition.name, count=len(left))
        try:
            for i in left:
                handles[i] = await self._fall_back(
                    definition, payloads[i], ids[i], defer_by, background, False
                )
        except EnqueueError as exc:
            raise EnqueueError(str(exc), queued=[h for h in handles if h is not None]) from None
        return [h for h in handles if h is not None]

    async def _send_many(
        self, name: str, ids: list[str], payloads: list[dict[str, Any]], defer_by: float | None
    ) -> list[EnqueueOutcome]:
        if not self._link.usable:
            return [EnqueueOutcome.NOT_SENT] * len(ids)
        now_ms = int(time.time() * 1000)
        score = now_ms + int((defer_by or 0) * 1000)
        jobs = [
            NewJob(job_id, job_record(name, payload, now_ms), score)
            for job_id, payload in zip(ids, payloads, strict=True)
        ]
        return await self._store.enqueue_many(jobs, batch_size=self.settings.worker_batch_size)

    # -- internals -------------------------------------------------------------------------------

    async def _events_redis_back(self) -> None:
        self.events.redis_back()

    async def _submit(
        self,
        definition: JobDefinition[Any, Any],
        payload: dict[str, Any],
        job_id: str | None,
        defer_by: float | None,
        background: bool,
    ) -> JobHandle[Any]:
        job_id = job_id or uuid.uuid4().hex
        reply_lost = False
        if self._link.usable:
            if definition.durable:
                await self._runner.journal.durable_recorded(
                    job_id=job_id,
                    name=definition.name,
                    payload=payload,
                    queue=self.settings.queue_name,
                    run_at=_run_at(defer_by),
                )
            try:
                outcome = await self._store.enqueue(
                    job_id=job_id, name=definition.name, payload=payload, defer_by_s=defer_by
                )
            except NotSent:
                pass
            except ReplyLost:
                reply_lost = True
            else:
                duplicate = outcome is EnqueueOutcome.DUPLICATE
                return JobHandle(job_id, definition.name, "queued", duplicate=duplicate, link=self._link)
        return await self._fall_back(definition, payload, job_id, defer_by, background, reply_lost)

    async def _fall_back(
        self,
        definition: JobDefinition[Any, Any],
        payload: dict[str, Any],
        job_id: str,
        defer_by: float | None,
        background: bool,
        reply_lost: bool,
    ) -> JobHandle[Any]:
        """Redis is unusable: spool, run inline or refuse, as the job's policy says.

        With Redis not configured at all there is nothing to spool for: spool-policy jobs run
        inline and deferred jobs are refused.
        """
        state = self._link.state.value
        configured = self._link.state is not LinkState.DISABLED
        if defer_by and not configured:
            raise EnqueueError(
                f"{definition.name}: deferred jobs need Redis and REDIS_URL is not configured; "
                "set REDIS_URL or enqueue without defer_by"
            )
        if configured and (defer_by or definition.fallback == "spool"):
            # A spooled copy of a job whose enqueue reply was lost is harmless: the relay's
            # enqueue deduplicates by job id.
            if await self._try_spool(definition, payload, job_id, defer_by):
                return JobHandle(job_id, definition.name, "spooled", link=self._link)
            if defer_by:
                raise EnqueueError(
                    f"{definition.name}: Redis is {state} and Postgres is unreachable, so the deferred job "
                    "can be neither queued nor kept; it would run early if run now. Retry later."
                )
            if not definition.inline_if_spool_down:
                raise EnqueueError(
                    f"{definition.name}: Redis is {state} and Postgres is unreachable; this job does not run "
                    "inline. Retry later."
                )
        elif definition.fallback == "reject":
            raise EnqueueError(
                f"{definition.name}: Redis is {state} and this job does not run inline; retry later"
            )
        if reply_lost:
            self._ambiguous.add(job_id)
            log.warning("enqueue reply lost, running inline", job_id=job_id, job=definition.name)
        self._inline_count += 1
        self.metrics.inline_fallback(definition.name)
        return await self._start_inline(definition, payload, job_id, background=background)

    async def _try_spool(
        self,
        definition: JobDefinition[Any, Any],
        payload: dict[str, Any],
        job_id: str,
        defer_by: float | None,
    ) -> bool:
        try:
            async with asyncio.timeout(5):
                pool = await self._runner.journal.pool()
                await self._spool(pool, definition, payload, job_id, defer_by)
        except PG_DOWN_ERRORS as exc:
            log.error("could not spool job: Postgres unreachable", job_id=job_id, error=str(exc))
            return False
        log.info("job spooled until Redis returns", job_id=job_id, job=definition.name)
        self._start_relay(pool)
        return True

    async def _spool(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        definition: JobDefinition[Any, Any],
        payload: dict[str, Any],
        job_id: str,
        defer_by: float | None,
    ) -> None:
        await spool_job(
            conn,
            job_id=job_id,
            name=definition.name,
            payload=payload,
            queue=self.settings.queue_name,
            run_at=_run_at(defer_by),
            durable=definition.durable,
        )

    def _start_relay(self, pool: asyncpg.Pool) -> None:
        if self._relay_task is None or self._relay_task.done():
            relay = SpoolRelay(pool, self._link)
            self._link.on_up(self._wake_relay(relay))
            self._relay_task = asyncio.get_running_loop().create_task(relay.run_forever())

    @staticmethod
    def _wake_relay(relay: SpoolRelay) -> Callable[[], Awaitable[None]]:
        async def wake() -> None:
            relay.wake()

        return wake

    async def _start_inline(
        self, definition: JobDefinition[Any, Any], payload: dict[str, Any], job_id: str, *, background: bool
    ) -> JobHandle[Any]:
        """Run inline: wait for the job by default; in background, hold one of the bounded slots."""
        if background:
            # Backpressure, not loss: when every slot is taken the caller waits for one.
            await self._background_slots.acquire()
        task = asyncio.ensure_future(self._runner.run_inline(definition, job_id=job_id, payload=payload))
        if background:
            self._background.add(task)
            task.add_done_callback(self._background_done)
        else:
            await asyncio.wait([task])
        return JobHandle(job_id, definition.name, "inline", task=task)

    def _background_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        self._background_slots.release()
        # Mark the outcome as retrieved; the runner already logged a failure.
        if not task.cancelled():
            task.exception()

    async def _withdraw_ambiguous(self) -> None:
        for job_id in list(self._ambiguous):
            outcome = await self._store.withdraw_if_pending(job_id)
            self._ambiguous.discard(job_id)
            if outcome is WithdrawOutcome.WITHDRAWN:
                log.info("withdrew queued copy of a job already run inline", job_id=job_id)
            elif outcome is WithdrawOutcome.ALREADY_STARTED:
                log.warning("job whose enqueue reply was lost also ran queued (at-least-once)", job_id=job_id)
