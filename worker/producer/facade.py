"""The producer the web app calls to enqueue jobs.

    async with Producer(settings) as producer:
        handle = await producer.enqueue(ping, message="hello")
        result = await handle.result(timeout=5)

While Redis is usable a job goes to Redis in one round trip. When Redis is down, unreachable or
not configured, the job follows its fallback policy (`routing.decide`): it runs inline at once
through the worker's own attempt path, waits in the Postgres spool, or is refused; `handle.mode`
says which happened. The backend's breaker makes later calls skip the network until Redis
answers again; queueing then resumes by itself.

At-least-once: if the enqueue command went out but the reply was lost (a blackholed network),
we cannot know whether the job landed. We run it inline (the caller never waits on a dead
Redis) and, once Redis answers, withdraw the queued copy if no worker has started it
(`ambiguous`). A worker may start it first; jobs are idempotent by job id, so the effect still
happens once. A durable job run inline holds its durable record with a lease and settles it
when it finishes, so the reconciler never queues it again.

Job families may attach a plug-in (analytics ingestion does); `track_event(s)` delegates to the
one that takes events.

With tracing on (OTEL_*), each enqueue is a span (`worker.telemetry.tracing`) whose context the
job record carries, so the attempts' spans join the trace of the request that enqueued it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import structlog

from core.clock import epoch_ms
from core.codec import check_job_id, encode_job, valid_traceparent
from core.context import JobContext
from core.enqueue import ENQUEUE, EnqueueOutcome
from core.errors import BackendRefused, EnqueueError, JobValidationError, NotSent, ReplyLost
from core.flow import check_queue_name, queue_key
from core.plugin import EventSink, Plugin, TrackResult
from core.registry import JobDefinition, Registry
from jobs import registry_for
from settings import Settings, load_settings
from worker.backend import CancelOutcome, EnqueueReply, LinkState, NewJob, QueueBackend
from worker.ledger import PG_DOWN_ERRORS, Ledger, SpoolRelay
from worker.plugins import Plugins
from worker.producer.ambiguous import AmbiguousReplies
from worker.producer.control import QueueControl
from worker.producer.handle import JobHandle
from worker.producer.inline import InlineExecutor
from worker.producer.routing import Route, decide
from worker.producer.status import job_status
from worker.runtime import Runtime
from worker.telemetry import Metrics
from worker.telemetry.tracing import Tracing

__all__ = ["JobRef", "Producer"]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
JobRef = str | Callable[..., Any] | JobDefinition[Any, Any]


def _new_job_ids(count: int) -> list[str]:
    """`count` ids in `uuid4().hex`'s format from one read of the OS's randomness (3x faster)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # RFC 4122 variant
    hexed = raw.hex()
    return [hexed[i : i + 32] for i in range(0, 32 * count, 32)]


# Fresh ids for single enqueues, taken from a batch: `uuid4()` reads the OS's randomness once per
# id, a syscall that was a sixth of a concurrent enqueue's CPU. A forked process (a web server's
# workers forked after import) starts with none, so no two processes hand out the same ids.
_SPARE_IDS: list[str] = []
os.register_at_fork(after_in_child=_SPARE_IDS.clear)


def _job_id(job_id: str | None) -> str:
    """The caller's id, checked against the job-id rule, or a fresh one."""
    if job_id is None:
        if not _SPARE_IDS:
            _SPARE_IDS.extend(_new_job_ids(256))
        return _SPARE_IDS.pop()
    check_job_id(job_id)
    return job_id


def _run_at(defer_by: float | None) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=defer_by or 0)


# The longest a job may be deferred: a year.
_MAX_DEFER_S = 366 * 86_400.0


def _defer(defer_by: float | None) -> float | None:
    """`defer_by` checked: a number of seconds from 0 to a year, or None."""
    if defer_by is None:
        return None
    if isinstance(defer_by, bool) or not isinstance(defer_by, int | float) or not math.isfinite(defer_by):
        raise JobValidationError(
            f"defer_by: {defer_by!r} is not a number of seconds; use 0 to {_MAX_DEFER_S:g}"
        )
    if not 0 <= defer_by <= _MAX_DEFER_S:
        raise JobValidationError(f"defer_by: {defer_by!r} is out of range; use 0 to {_MAX_DEFER_S:g} seconds")
    return float(defer_by) or None


def _trace(traceparent: str | None) -> str | None:
    if traceparent is not None and not valid_traceparent(traceparent):
        shown = repr(traceparent) if len(traceparent) <= 80 else repr(traceparent[:77] + "...")
        raise JobValidationError(
            f"traceparent: {shown} is not a W3C traceparent; "
            "use 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"
        )
    return traceparent


@dataclass(frozen=True, slots=True)
class _Submission:
    """One validated job on its way: where it goes is decided from here on."""

    definition: JobDefinition[Any, Any]
    payload: dict[str, Any]
    job_id: str
    queue: str  # the Redis key of the queue it goes to
    defer_by: float | None = None
    background: bool = False
    traceparent: str | None = None


class Producer:
    """Enqueue jobs to Redis, or spool or run them inline when Redis is unusable. Use as `async with`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        """`runtime`, when given, is shared with its owner (a worker), who starts and closes it
        and runs the plug-ins; otherwise the producer has its own."""
        self.settings = settings or load_settings()
        # Given, or ours with the modules in JOB_MODULES.
        self.registry = registry = registry if registry is not None else registry_for(self.settings)
        self._owns_runtime = runtime is None
        self.runtime = runtime or Runtime.build(self.settings, registry, role="producer")
        self._inline = InlineExecutor(self.settings, self.runtime.attempts)
        self._tracing = self.runtime.attempts.tracing  # None unless OTEL_* turns tracing on
        # The queues, their pause flags and cancellation (`cancel`, `pause_queue`, ...).
        self.queues = QueueControl(self.settings, registry, self.runtime.backend, self.runtime.ledger)
        self._ambiguous = AmbiguousReplies(self.runtime.backend)
        self._plugins = Plugins()
        self._relay: SpoolRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._inline_count = 0
        self._refusal_logged_at = -3600.0
        # What Redis last refused this producer (wrong password, a missing ACL grant), if anything.
        self.last_refusal: str | None = None
        if self._owns_runtime:
            self.runtime.deps.provide(ENQUEUE, self.enqueue_by_name)  # follow-up jobs of inline runs

    @property
    def backend(self) -> QueueBackend:
        return self.runtime.backend

    @property
    def ledger(self) -> Ledger:
        return self.runtime.ledger

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    @property
    def inline_count(self) -> int:
        """How many jobs this producer ran inline because Redis was unusable."""
        return self._inline_count

    def plugin(self, name: str) -> Plugin:
        """A running plug-in of a job family (e.g. "analytics")."""
        return self._plugins.get(name)

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.backend.on_up(self._ambiguous.withdraw_all)
        if not self._owns_runtime:
            return  # the owner starts the backend, reports how Redis is and runs the plug-ins
        self.backend.on_up(self._plugins.redis_back)
        try:
            state = await self.backend.start()
        except BackendRefused as exc:
            # A configuration error, said loudly; jobs still run inline (or spool) meanwhile.
            self.last_refusal = str(exc)
            log.error(
                "redis refuses this producer; jobs fall back as if it were down",
                url=self.settings.redis_url_redacted,
                error=str(exc),
            )
            state = self.backend.state
        if self.backend.usable:
            log.info("Redis primary client connected, jobs are queued", url=self.settings.redis_url_redacted)
        else:
            log.warning("Redis not available, falling back to inline execution", redis=state.value)
        await self._plugins.start(self.runtime, "producer", self.enqueue_by_name)

    async def close(self) -> None:
        """Close the plug-ins (analytics writes its buffered events), wait for background inline
        jobs, then release Redis and the dependencies.

        Raises what a plug-in raised on close (`EventsNotDelivered` if analytics events held in
        memory could not be written), after everything else is closed.
        """
        try:
            await self._plugins.close()
        finally:
            await self._inline.close()
            if self._relay_task is not None:
                self._relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._relay_task
            if self._owns_runtime:
                await self.runtime.aclose()
            else:
                await self.ledger.drain()

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
        traceparent: str | None = None,
        queue: str | None = None,
    ) -> JobHandle[Any]:
        """Enqueue by function, definition or registered name.

        `job_id` deduplicates: a second enqueue with the same id while the job or its result is
        in Redis creates nothing and returns a handle with `duplicate=True`. `defer_by` delays
        the start; a deferred job is never run early, so it is spooled or refused while Redis is
        down. With `background=True` an inline run returns at once and runs as a tracked task.
        `traceparent` (W3C Trace Context) travels with the job, so its log lines join the trace
        of the request that enqueued it. `queue` overrides the queue the job's definition names.
        """
        definition = self.registry.get(job)
        payload = definition.payload(
            kwargs or {}, max_bytes=self.settings.max_payload_bytes, settings=self.settings
        )
        definition.check_settings(self.settings)
        sub = _Submission(
            definition,
            payload,
            _job_id(job_id),
            self._queue_for(definition, payload, queue),
            _defer(defer_by),
            background,
            _trace(traceparent),
        )
        if self._tracing is None:
            return await self._submit(sub)
        return await self._traced(self._tracing, sub, self._submit)

    async def enqueue_json(
        self,
        job: JobRef,
        raw_args: str | bytes,
        *,
        job_id: str | None = None,
        inline: bool = False,
        queue: str | None = None,
    ) -> JobHandle[Any]:
        """Enqueue with arguments given as JSON text (the CLI); `inline=True` skips Redis."""
        definition = self.registry.get(job)
        payload = definition.payload_from_json(
            raw_args, max_bytes=self.settings.max_payload_bytes, settings=self.settings
        )
        definition.check_settings(self.settings)
        sub = _Submission(definition, payload, _job_id(job_id), self._queue_for(definition, payload, queue))
        submit = self._run_inline if inline else self._submit
        if self._tracing is None:
            return await submit(sub)
        return await self._traced(self._tracing, sub, submit)

    async def enqueue_in_transaction(
        self,
        conn: asyncpg.Connection,
        job: JobRef,
        kwargs: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        defer_by: float | None = None,
        traceparent: str | None = None,
        queue: str | None = None,
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
        payload = definition.payload(
            kwargs or {}, max_bytes=self.settings.max_payload_bytes, settings=self.settings
        )
        job_id, defer_by = _job_id(job_id), _defer(defer_by)
        key, trace = self._queue_for(definition, payload, queue), _trace(traceparent)
        span = self._tracing.enqueue(definition.name, job_id, key, trace) if self._tracing else None
        try:
            await self.ledger.spool(
                conn,
                job_id=job_id,
                name=definition.name,
                kwargs=payload,
                queue=key,
                run_at=_run_at(defer_by),
                durable=definition.durable,
                traceparent=span.traceparent if span is not None else trace,
            )
        except BaseException as exc:
            if span is not None:
                span.failed(exc)
            raise
        if span is not None:
            span.done("spooled")
        return JobHandle(job_id, definition.name, "spooled", backend=self.backend)

    async def enqueue_many(
        self,
        job: JobRef,
        kwargs_list: Iterable[Mapping[str, Any]],
        *,
        job_ids: Sequence[str] | None = None,
        defer_by: float | None = None,
        background: bool = False,
        traceparent: str | None = None,
        queue: str | None = None,
    ) -> list[JobHandle[Any]]:
        """Enqueue many jobs of one kind; one handle per job, in order.

        Every job is validated before anything is sent (one bad job refuses the whole call with
        `JobValidationError`). Then all go to Redis in pipelined script calls of
        `WORKER_BATCH_SIZE` jobs, in one write. Jobs Redis did not take fall back by the same
        rules as `enqueue_job` (a refused one raises `EnqueueError`, whose `queued` lists the
        handles of those that did reach Redis). `job_ids` deduplicate as in `enqueue_job`, also
        within the call. With tracing on, the call is one span, whose context every job carries.
        """
        if self._tracing is None:
            return await self._enqueue_many(
                job, kwargs_list, job_ids, defer_by, background, traceparent, queue
            )
        jobs = list(kwargs_list)
        name = self.registry.get(job).name
        span = self._tracing.enqueue(name, None, None, _trace(traceparent), count=len(jobs))
        try:
            handles = await self._enqueue_many(
                job, jobs, job_ids, defer_by, background, span.traceparent, queue
            )
        except BaseException as exc:
            span.failed(exc)
            raise
        span.done_many(Counter(h.mode for h in handles))
        return handles

    async def _enqueue_many(
        self,
        job: JobRef,
        kwargs_list: Iterable[Mapping[str, Any]],
        job_ids: Sequence[str] | None,
        defer_by: float | None,
        background: bool,
        traceparent: str | None,
        queue: str | None,
    ) -> list[JobHandle[Any]]:
        definition = self.registry.get(job)
        definition.check_settings(self.settings)
        limit = self.settings.max_payload_bytes
        payloads = [
            definition.payload(kwargs, max_bytes=limit, settings=self.settings) for kwargs in kwargs_list
        ]
        ids = [_job_id(i) for i in job_ids] if job_ids is not None else _new_job_ids(len(payloads))
        defer_by = _defer(defer_by)
        if len(ids) != len(payloads):
            raise JobValidationError(
                f"{definition.name}: {len(ids)} job ids for {len(payloads)} jobs; give one id per job"
            )
        queues = [self._queue_for(definition, payload, queue) for payload in payloads]
        trace = _trace(traceparent)
        if definition.durable and self.backend.usable:
            for job_id, payload, key in zip(ids, payloads, queues, strict=True):
                await self.ledger.durable_recorded(
                    job_id=job_id,
                    name=definition.name,
                    kwargs=payload,
                    queue=key,
                    run_at=_run_at(defer_by),
                    traceparent=trace,
                )
        replies = [EnqueueReply.NOT_SENT] * len(ids)
        by_queue: dict[str, list[int]] = {}
        for i, key in enumerate(queues):
            by_queue.setdefault(key, []).append(i)
        try:
            for key, indexes in by_queue.items():
                sent = await self._send_many(
                    definition.name,
                    [ids[i] for i in indexes],
                    [payloads[i] for i in indexes],
                    defer_by,
                    trace,
                    key,
                )
                for i, reply in zip(indexes, sent, strict=True):
                    replies[i] = reply
        except BackendRefused as exc:
            self._refused(exc)
        handles: list[JobHandle[Any] | None] = [None] * len(ids)
        left = []
        for i, reply in enumerate(replies):
            if reply in (EnqueueReply.QUEUED, EnqueueReply.DUPLICATE):
                duplicate = reply is EnqueueReply.DUPLICATE
                handles[i] = JobHandle(
                    ids[i],
                    definition.name,
                    "queued",
                    duplicate=duplicate,
                    backend=self.backend,
                    queue=queues[i],
                )
            else:
                left.append(i)
                if reply is EnqueueReply.UNKNOWN:
                    self._ambiguous.add(queues[i], ids[i])
        if left:
            log.warning("bulk enqueue falling back", job=definition.name, count=len(left))
        try:
            for i in left:
                sub = _Submission(definition, payloads[i], ids[i], queues[i], defer_by, background, trace)
                handles[i] = await self._fall_back(sub)
        except EnqueueError as exc:
            raise EnqueueError(str(exc), queued=[h for h in handles if h is not None]) from None
        return [h for h in handles if h is not None]

    async def status(self, job_id: str) -> dict[str, Any]:
        """Where the job is: spooled, queued, deferred, in_progress (with its latest
        `progress`), complete, failed, cancelled or dead."""
        control = self._inline.controls.get(job_id)
        if control is not None:  # running inline in this process
            report: dict[str, Any] = {"job_id": job_id, "status": "in_progress", "mode": "inline"}
            if control.latest is not None:
                report["progress"] = control.latest.to_dict()
            return report
        return await job_status(self.backend, self.ledger, job_id, self.queues.by_key)

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: a queued, deferred or spooled one is removed and reports `cancelled`; a
        running one is asked to stop (`ctx.cancel_requested`) and ends `cancelled` if it does.
        Returns what happened: cancelled, requested, finished (already over) or not_found."""
        check_job_id(job_id)
        return await self.queues.cancel(job_id, self._inline.controls)

    async def pause_queue(self, name: str) -> bool:
        """Workers stop claiming from queue `name`; jobs keep arriving and wait. False if it
        was paused already."""
        return await self.queues.pause(name)

    async def resume_queue(self, name: str) -> bool:
        """Workers claim from queue `name` again at once. False if it was not paused."""
        return await self.queues.resume(name)

    async def enqueue_by_name(self, job: str, kwargs: Mapping[str, Any], *, job_id: str) -> EnqueueOutcome:
        """The `Enqueue` seam jobs and plug-ins reach through `ENQUEUE`: queue (or run inline) by name."""
        handle = await self.enqueue_job(job, kwargs, job_id=job_id)
        return "duplicate" if handle.duplicate else handle.mode

    async def track_event(self, **event: Any) -> str:
        """Record one analytics event; return its id. Raises `InvalidEvent` when refused.

        No job is queued per event: the analytics plug-in buffers them (`jobs.analytics.ingest`).
        """
        return await self._event_sink().track_one(event)

    async def track_events(self, events: Iterable[Mapping[str, Any]]) -> TrackResult:
        """Record analytics events; invalid ones are refused with reasons, the rest accepted."""
        return await self._event_sink().track(events)

    # -- internals -------------------------------------------------------------------------------

    def _refused(self, exc: BackendRefused) -> None:
        """Redis refused an enqueue (credentials, an ACL, out of memory): the job falls back as
        in an outage, and the refusal, a configuration problem, is logged at most once a minute."""
        self.last_refusal = str(exc)
        if time.monotonic() - self._refusal_logged_at > 60:
            self._refusal_logged_at = time.monotonic()
            log.error("redis refused an enqueue; jobs fall back as if it were down", error=str(exc))

    def _queue_for(
        self, definition: JobDefinition[Any, Any], payload: Mapping[str, Any], queue: str | None
    ) -> str:
        """The Redis key of the queue a job goes to: the caller's choice, else its definition's."""
        name = check_queue_name(queue) if queue is not None else definition.queue_for(payload)
        return queue_key(self.settings, name)

    def _event_sink(self) -> EventSink:
        sink = self._plugins.event_sink()
        if sink is None:
            raise JobValidationError("no job family in this producer's registry takes events")
        return sink

    async def _send_many(
        self,
        name: str,
        ids: list[str],
        payloads: list[dict[str, Any]],
        defer_by: float | None,
        traceparent: str | None,
        queue: str,
    ) -> list[EnqueueReply]:
        if not self.backend.usable:
            return [EnqueueReply.NOT_SENT] * len(ids)
        now_ms = epoch_ms()
        score = now_ms + int((defer_by or 0) * 1000)
        jobs = [
            NewJob(job_id, encode_job(name, payload, enqueue_ms=now_ms, traceparent=traceparent), score)
            for job_id, payload in zip(ids, payloads, strict=True)
        ]
        return await self.backend.enqueue_many(queue, jobs, batch_size=self.settings.worker_batch_size)

    @staticmethod
    async def _traced(
        tracing: Tracing, sub: _Submission, submit: Callable[[_Submission], Awaitable[JobHandle[Any]]]
    ) -> JobHandle[Any]:
        """`submit(sub)` inside an enqueue span; the job carries the span's traceparent."""
        span = tracing.enqueue(sub.definition.name, sub.job_id, sub.queue, sub.traceparent)
        try:
            handle = await submit(replace(sub, traceparent=span.traceparent))
        except BaseException as exc:
            span.failed(exc)
            raise
        span.done(handle.mode, duplicate=handle.duplicate)
        return handle

    async def _submit(self, sub: _Submission) -> JobHandle[Any]:
        if not self.backend.usable:
            return await self._fall_back(sub)
        queue, name = sub.queue, sub.definition.name
        if sub.definition.durable:
            await self.ledger.durable_recorded(
                job_id=sub.job_id,
                name=name,
                kwargs=sub.payload,
                queue=queue,
                run_at=_run_at(sub.defer_by),
                traceparent=sub.traceparent,
            )
        try:
            reply = await self.backend.enqueue(
                queue,
                job_id=sub.job_id,
                name=name,
                kwargs=sub.payload,
                defer_by_s=sub.defer_by,
                traceparent=sub.traceparent,
            )
        except NotSent:
            return await self._fall_back(sub)
        except ReplyLost:
            self._ambiguous.add(queue, sub.job_id)
            log.warning(
                "enqueue reply lost, running inline",
                job_id=sub.job_id,
                job=name,
                detail="Redis went away after the job was sent, so it may or may not be queued; it runs "
                "here now, and a queued copy is withdrawn when Redis is back unless a worker started it",
            )
            return await self._fall_back(sub)
        except BackendRefused as exc:
            self._refused(exc)
            return await self._fall_back(sub)
        duplicate = reply is EnqueueReply.DUPLICATE
        return JobHandle(sub.job_id, name, "queued", duplicate=duplicate, backend=self.backend, queue=queue)

    async def _fall_back(self, sub: _Submission) -> JobHandle[Any]:
        """Redis is unusable: spool, run inline or refuse, as `routing.decide` says."""
        definition = sub.definition
        state = LinkState.DOWN if self.backend.state is LinkState.UP else self.backend.state
        spool_failed = False
        too_big = definition.too_big_inline(self.settings, sub.payload)
        while True:
            decision = decide(
                fallback=definition.fallback,
                inline_if_spool_down=definition.inline_if_spool_down,
                deferred=bool(sub.defer_by),
                backend=state,
                spool_failed=spool_failed,
                too_big_inline=too_big,
            )
            if decision.route is Route.REJECT:
                raise EnqueueError(f"{definition.name}: {decision.reason}")
            if decision.route is Route.SPOOL:
                # A spooled copy of a job whose enqueue reply was lost is harmless: the relay's
                # enqueue deduplicates by job id.
                if await self._try_spool(sub):
                    return JobHandle(sub.job_id, definition.name, "spooled", backend=self.backend)
                spool_failed = True
                continue
            self._inline_count += 1
            self.metrics.inline_fallback(definition.name)
            if definition.durable and state is not LinkState.DISABLED:
                # Its durable record may exist (written before the enqueue failed): hold it.
                await self.ledger.durable_running_inline(sub.job_id, lease_s=self._inline.lease_s(definition))
            return await self._run_inline(sub)

    async def _try_spool(self, sub: _Submission) -> bool:
        try:
            async with asyncio.timeout(5):
                await self.ledger.spool(
                    None,
                    job_id=sub.job_id,
                    name=sub.definition.name,
                    kwargs=sub.payload,
                    queue=sub.queue,
                    run_at=_run_at(sub.defer_by),
                    durable=sub.definition.durable,
                    traceparent=sub.traceparent,
                )
        except PG_DOWN_ERRORS as exc:
            log.error("could not spool job: Postgres unreachable", job_id=sub.job_id, error=str(exc))
            return False
        log.info("job spooled until Redis returns", job_id=sub.job_id, job=sub.definition.name)
        self._start_relay()
        return True

    def _start_relay(self) -> None:
        if self._relay_task is None or self._relay_task.done():
            relay = self._relay = SpoolRelay(self.ledger, self.backend)

            async def wake() -> None:
                relay.wake()

            self.backend.on_up(wake)
            self._relay_task = asyncio.get_running_loop().create_task(relay.run_forever())

    async def _run_inline(self, sub: _Submission) -> JobHandle[Any]:
        task = await self._inline.start(
            sub.definition,
            job_id=sub.job_id,
            kwargs=sub.payload,
            background=sub.background,
            traceparent=sub.traceparent,
            queue=sub.queue,
        )
        controls = self._inline.controls
        return JobHandle(
            sub.job_id,
            sub.definition.name,
            "inline",
            task=task,
            progress=lambda: c.latest if (c := controls.get(sub.job_id)) is not None else None,
        )
