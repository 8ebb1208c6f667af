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
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, cast

import structlog

from jobs import REGISTRY
from jobs.context import JobContext
from jobs.deps import Deps
from jobs.registry import JobDefinition, Registry
from settings import Settings, load_settings
from worker.cache import make_cache
from worker.errors import EnqueueError, JobFailed, JobValidationError
from worker.queue_store import EnqueueOutcome, NewJob, QueueStore, WithdrawOutcome, job_record
from worker.redis_link import NotSent, RedisLink, ReplyLost
from worker.runner import JobRunner
from worker.serializer import error_from_payload

__all__ = ["JobHandle", "Producer"]

log = structlog.get_logger("worker.producer")

P = ParamSpec("P")
R = TypeVar("R")
Mode = Literal["queued", "inline"]
JobRef = str | Callable[..., Any] | JobDefinition[Any, Any]


def _new_job_ids(count: int) -> list[str]:
    """`count` ids in `uuid4().hex`'s format from one read of the OS's randomness (3x faster)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # RFC 4122 variant
    hexed = raw.hex()
    return [hexed[i : i + 32] for i in range(0, 32 * count, 32)]


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
            record = await link.fetch_result(self.job_id)
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

    def __init__(self, settings: Settings | None = None, *, registry: Registry = REGISTRY) -> None:
        self.settings = settings or load_settings()
        self.registry = registry
        self._link = RedisLink(self.settings, role="producer")
        self._store = QueueStore(self._link, self.settings.queue_name)
        self._deps = Deps(self.settings, cache=make_cache(self.settings))
        self._runner = JobRunner(self.settings, self._deps)
        self._background: set[asyncio.Future[Any]] = set()
        self._background_slots = asyncio.Semaphore(self.settings.inline_max_background)
        self._ambiguous: set[str] = set()  # ids of jobs whose enqueue reply was lost
        self._inline_count = 0

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
        state = await self._link.start()
        if self._link.usable:
            log.info("Redis primary client connected, jobs are queued", url=self.settings.redis_url_redacted)
        else:
            log.warning("Redis not available, falling back to inline execution", redis=state.value)

    async def close(self) -> None:
        """Wait for background inline jobs, then release Redis and the job dependencies."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._link.aclose()
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
        return await self._submit(definition, payload, job_id, defer_by, background)

    async def enqueue_json(
        self, job: JobRef, raw_args: str | bytes, *, job_id: str | None = None, inline: bool = False
    ) -> JobHandle[Any]:
        """Enqueue with arguments given as JSON text (the CLI); `inline=True` skips Redis."""
        definition = self.registry.get(job)
        payload = definition.payload_from_json(raw_args, max_bytes=self.settings.max_payload_bytes)
        if inline:
            return await self._start_inline(definition, payload, job_id or uuid.uuid4().hex, background=False)
        return await self._submit(definition, payload, job_id, None, False)

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
        `WORKER_BATCH_SIZE` jobs, in one write. Jobs Redis did not take run inline by the same
        rules as `enqueue_job` (deferred jobs are refused with `EnqueueError`, whose `queued`
        lists the handles of those that did reach Redis). `job_ids` deduplicate as in
        `enqueue_job`, also within the call.
        """
        definition = self.registry.get(job)
        limit = self.settings.max_payload_bytes
        payloads = [definition.payload(kwargs, max_bytes=limit) for kwargs in kwargs_list]
        ids = list(job_ids) if job_ids is not None else _new_job_ids(len(payloads))
        if len(ids) != len(payloads):
            raise JobValidationError(
                f"{definition.name}: {len(ids)} job ids for {len(payloads)} jobs; give one id per job"
            )
        outcomes = await self._send_many(definition.name, ids, payloads, defer_by)
        handles: list[JobHandle[Any] | None] = [None] * len(ids)
        inline = []
        for i, outcome in enumerate(outcomes):
            if outcome in (EnqueueOutcome.QUEUED, EnqueueOutcome.DUPLICATE):
                duplicate = outcome is EnqueueOutcome.DUPLICATE
                handles[i] = JobHandle(
                    ids[i], definition.name, "queued", duplicate=duplicate, link=self._link
                )
            else:
                inline.append(i)
                if outcome is EnqueueOutcome.UNKNOWN:
                    self._ambiguous.add(ids[i])
        if inline and defer_by:
            raise EnqueueError(
                f"{definition.name}: {len(inline)} of {len(ids)} deferred jobs could not be queued while "
                f"Redis is {self._link.state.value}; they would run early if run now. Retry those later.",
                queued=[h for h in handles if h is not None],
            )
        if inline:
            log.warning("bulk enqueue running jobs inline", job=definition.name, count=len(inline))
        for i in inline:
            handles[i] = await self._start_inline(definition, payloads[i], ids[i], background=background)
        return [h for h in handles if h is not None]

    # -- internals -------------------------------------------------------------------------------

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

    async def _submit(
        self,
        definition: JobDefinition[Any, Any],
        payload: dict[str, Any],
        job_id: str | None,
        defer_by: float | None,
        background: bool,
    ) -> JobHandle[Any]:
        job_id = job_id or uuid.uuid4().hex
        if self._link.usable:
            try:
                outcome = await self._store.enqueue(
                    job_id=job_id, name=definition.name, payload=payload, defer_by_s=defer_by
                )
            except NotSent:
                pass
            except ReplyLost:
                self._ambiguous.add(job_id)
                log.warning("enqueue reply lost, running inline", job_id=job_id, job=definition.name)
            else:
                return JobHandle(
                    job_id,
                    definition.name,
                    "queued",
                    duplicate=outcome is EnqueueOutcome.DUPLICATE,
                    link=self._link,
                )
        if defer_by:
            raise EnqueueError(
                f"{definition.name}: cannot defer a job while Redis is {self._link.state.value}; "
                "it would run early if run now. Retry later or enqueue without defer_by."
            )
        return await self._start_inline(definition, payload, job_id, background=background)

    async def _start_inline(
        self, definition: JobDefinition[Any, Any], payload: dict[str, Any], job_id: str, *, background: bool
    ) -> JobHandle[Any]:
        """Run inline: wait for the job by default; in background, hold one of the bounded slots."""
        self._inline_count += 1
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
