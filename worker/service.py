"""The arq worker: registry jobs wrapped in our execution path, and survival of Redis outages.

arq fetches, locks and records jobs; `JobRunner` runs each attempt, so retries, timeouts and
log lines match the inline runner. A transient failure becomes arq's `Retry` with our backoff;
a permanent one (or exhausted retries) becomes a stored structured error.

arq's worker exits on the first Redis error. Here a Redis error in the poll loop opens the
breaker; the worker logs `redis unavailable` once, waits for the probe to see Redis again
(`redis connected`) and carries on with the same process, jobs and connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import uuid
from datetime import UTC
from typing import Any

import structlog
from arq.cron import CronJob, cron
from arq.jobs import deserialize_result
from arq.utils import poll
from arq.worker import Function, Retry, Worker, func

from jobs import REGISTRY
from jobs.analytics.queue import EVENT_QUEUE
from jobs.deps import POSTGRES, Deps
from jobs.enqueue import ENQUEUE
from jobs.registry import JobDefinition, Registry
from settings import Settings
from worker import keys
from worker.cache import make_cache
from worker.errors import JobFailed
from worker.event_queue import RedisEventQueue
from worker.http import HealthServer
from worker.metrics import Metrics
from worker.migrate import migrate_at_start
from worker.producer import Producer
from worker.reconciler import DurableReconciler
from worker.redis_link import REDIS_DOWN_ERRORS, REDIS_ERRORS, NotSent, RedisLink, ReplyLost
from worker.runner import JobRunner
from worker.serializer import deserialize, error_from_payload, serialize
from worker.spool import PG_DOWN_ERRORS, SpoolRelay
from worker.stats import publish_forever

__all__ = ["JobWorker", "WorkerService", "arq_cron_jobs", "arq_functions", "run_worker"]

log = structlog.get_logger("worker.service")

# What tells the worker that Redis is gone (as opposed to refusing a command).
_REDIS_OUTAGE: tuple[type[BaseException], ...] = (NotSent, ReplyLost, *REDIS_DOWN_ERRORS)

# Slack over the job's own timeout, so our timeout (which the inline runner shares) fires first.
_ARQ_TIMEOUT_SLACK_S = 5.0


def _entry_for(definition: JobDefinition[Any, Any]) -> Any:
    async def entry(ctx: dict[str, Any], **payload: Any) -> Any:
        runner: JobRunner = ctx["runner"]
        attempt = await runner.attempt(
            definition,
            job_id=ctx["job_id"],
            payload=payload,
            job_try=ctx["job_try"],
            mode="queued",
            enqueue_time=ctx.get("enqueue_time"),
        )
        if attempt.outcome == "retry":
            raise Retry(defer=attempt.retry_in)
        if attempt.error is not None:
            raise attempt.error
        return attempt.result

    entry.__qualname__ = entry.__name__ = definition.name
    return entry


def arq_functions(registry: Registry, runner_settings: Settings) -> list[Function]:
    functions = []
    for definition in registry:
        timeout = (definition.timeout or runner_settings.job_timeout) + _ARQ_TIMEOUT_SLACK_S
        max_tries = definition.max_tries or runner_settings.job_max_tries
        functions.append(
            func(_entry_for(definition), name=definition.name, timeout=timeout, max_tries=max_tries)
        )
    return functions


def _arq_field(value: int | frozenset[int] | None) -> int | set[int] | None:
    return set(value) if isinstance(value, frozenset) else value


def arq_cron_jobs(registry: Registry, runner_settings: Settings) -> list[CronJob]:
    """The registry's schedules as arq cron jobs (named `cron:<job>`, one run per tick per fleet).

    A scheduled run gets one try: arq holds a finished cron job's lock for a minute, so a retry
    would wait that long anyway, and the next tick is the retry.
    """
    jobs = []
    for schedule in registry.schedules:
        definition = dataclasses.replace(registry.get(schedule.job), max_tries=1)
        jobs.append(
            cron(
                _entry_for(definition),
                name=f"cron:{definition.name}",
                month=_arq_field(schedule.month),
                day=_arq_field(schedule.day),
                weekday=_arq_field(schedule.weekday),
                hour=_arq_field(schedule.hour),
                minute=_arq_field(schedule.minute),
                second=_arq_field(schedule.second),
                microsecond=0,
                run_at_startup=schedule.run_at_startup,
                timeout=(definition.timeout or runner_settings.job_timeout) + _ARQ_TIMEOUT_SLACK_S,
                max_tries=1,
            )
        )
    return jobs


class _QuietArqFailures(logging.Filter):
    """Drop arq's log record for failures and retries our runner has already logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, JobFailed | Retry)


class JobWorker(Worker):
    """arq's Worker, made to survive Redis outages and to log arq-side failures our way."""

    def __init__(self, *, link: RedisLink, lock_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = link
        self.lock_ms = int(lock_timeout_s * 1000)
        self.stopping = False
        self.token = uuid.uuid4().hex  # marks the in-progress locks this worker holds
        self._unsure_claims: set[str] = set()
        self._drain_task: asyncio.Task[None] | None = None
        self._leave_loop = False

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        log.info(
            "worker started",
            jobs=sorted(self.functions),
            queue=self.queue_name,
            max_jobs=self.max_jobs,
            poll_delay_s=self.poll_delay_s,
            burst=self.burst,
        )
        async for _ in poll(self.poll_delay_s):
            if self._leave_loop:
                return
            await self._poll_iteration()
            if self.burst and await self._burst_done():
                return

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started():
            await asyncio.gather(*self.tasks.values())
            return True
        try:
            queued = await self.pool.zcard(self.queue_name)
        except REDIS_DOWN_ERRORS as exc:
            await self._wait_for_redis(exc)
            return False
        if queued == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except _REDIS_OUTAGE as exc:
            await self._wait_for_redis(exc)
        except REDIS_ERRORS as exc:
            # A refusal (OOM, NOPERM, ...) would repeat on every poll; say so and slow down.
            log.error("redis refused a worker command", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the free slots in one round trip, then start a task per claimed job.

        Claiming before touching the slot counters means a Redis error mid-claim leaks nothing.
        """
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        lock_ms = self.lock_ms
        candidates = [job_id.decode() for job_id in job_ids[:free]]
        try:
            claimed = await self.link.claim(self.queue_name, candidates, lock_ms, self.token)
        except ReplyLost:
            # Some locks may be ours without our knowing; drop them once Redis is back.
            self._unsure_claims.update(candidates)
            raise
        for job_id, score in claimed:
            await self.sem.acquire()
            self.job_counter += 1
            task = asyncio.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _wait_for_redis(self, exc: BaseException) -> None:
        self.link.report_failure(exc)
        await self.link.wait_until_up()
        if self._unsure_claims:
            ids = [job_id for job_id in self._unsure_claims if job_id not in self.tasks]
            self._unsure_claims.clear()
            released = await self.link.release_claims(ids, self.token)
            log.info("released job locks whose claim reply was lost", released=released)

    async def _record(self, what: str, job_id: str, write: Any) -> None:
        # A finished job's record must reach Redis, or the job would run again; wait out an outage.
        while True:
            try:
                await write()
                return
            except REDIS_DOWN_ERRORS as exc:
                if self.stopping:
                    log.error("could not record job outcome, it will run again", job_id=job_id, what=what)
                    return
                self.link.report_failure(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self.link.wait_until_up()

    async def extend_locks_forever(self) -> None:
        """Keep the locks of running jobs alive, a third of their lifetime at a time.

        Locks are short so that a SIGKILLed worker's jobs run again within seconds, not after the
        longest job timeout; a live worker's jobs keep theirs. Idle, this sends nothing.
        """
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running or not self.link.usable:
                continue
            try:
                held = await self.link.extend_claims(running, self.token, self.lock_ms)
            except _REDIS_OUTAGE:
                continue  # the poll loop deals with the outage
            if held < len(running):
                log.warning("some running jobs lost their lock and may run twice", lost=len(running) - held)

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except REDIS_DOWN_ERRORS as exc:
            # Redis went away as the job was being loaded: it did not run. Release our claim once
            # Redis is back, or the job would wait for the in-progress lock to expire (minutes).
            self.link.report_failure(exc)
            await self._record("release", job_id, lambda: self.pool.delete(keys.in_progress_key(job_id)))
            log.warning("job not started, Redis was unavailable; released for another try", job_id=job_id)

    async def finish_job(self, job_id: str, *args: Any) -> None:
        parent = super().finish_job
        await self._record("result", job_id, lambda: parent(job_id, *args))

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        # Reached only for failures arq decides itself: bad payload, unknown job, expired job,
        # tries exhausted by crashes. Our runner's failures go through finish_job.
        error: dict[str, Any] = {"type": "Error", "message": "unknown failure", "kind": "permanent"}
        name, payload, tries, enqueued = "<unknown>", {}, 1, None
        if result_data:
            with contextlib.suppress(Exception):
                info = deserialize_result(result_data, deserializer=deserialize)
                error = error_from_payload(info.result) or error
                name, payload, tries, enqueued = (
                    info.function,
                    dict(info.kwargs),
                    info.job_try,
                    info.enqueue_time,
                )
        log.error(
            "job finished",
            job_id=job_id,
            job=name,
            outcome="failed",
            mode="queued",
            error_type=error.get("type"),
            error=error.get("message"),
            kind="permanent",
        )
        runner: JobRunner = self.ctx["runner"]
        await runner.journal.dead_letter(
            job_id=job_id,
            name=name,
            payload=payload,
            error=error,
            tries=tries,
            mode="queued",
            enqueue_time=enqueued,
        )
        parent = super().finish_failed_job
        await self._record("failure", job_id, lambda: parent(job_id, result_data))

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """Stop taking jobs; let running ones finish within the grace period; then stop."""
        if self.stopping:
            return
        self.stopping = True
        self.allow_pick_jobs = False
        running = [t for t in self.tasks.values() if not t.done()]
        log.info(
            "shutdown requested, finishing running jobs",
            signal=signal.Signals(signum).name,
            running=len(running),
            grace_s=self._job_completion_wait,
        )
        # Keep a reference: the event loop holds tasks only weakly.
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_stop(running))

    async def _drain_then_stop(self, running: list[asyncio.Task[Any]]) -> None:
        if running:
            _, late = await asyncio.wait(running, timeout=self._job_completion_wait)
            for task in late:
                task.cancel()  # arq puts a cancelled job back in the queue for another try
            if late:
                log.warning("jobs still running after the grace period were cancelled", count=len(late))
        # Leave the poll loop at its next turn; cancel only a loop stuck in a long wait (a
        # cancellation can land inside the Redis client, which is messier than a clean exit).
        self._leave_loop = True
        if self.main_task is not None:
            _, pending = await asyncio.wait({self.main_task}, timeout=max(1.0, self.poll_delay_s * 5))
            if pending:
                self.main_task.cancel()


class WorkerService:
    """One worker process's lifetime: Redis link, dependencies, the arq worker, clean shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        burst: bool = False,
        registry: Registry = REGISTRY,
        handle_signals: bool = True,
    ) -> None:
        # arq binds its tasks and signal handlers to the loop current at construction.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("create WorkerService inside the event loop that will run it") from None
        self.settings = settings
        self.link = RedisLink(settings, role="worker", socket_timeout=settings.worker_redis_socket_timeout)
        self.deps = Deps(settings, cache=make_cache(settings))
        self.metrics = Metrics()
        self.metrics.watch_breaker(lambda: not self.link.usable)
        self.runner = JobRunner(settings, self.deps, self.metrics)
        # Jobs queue follow-up jobs (emails) through a producer, inline while Redis is down.
        self.producer = Producer(settings, registry=registry)
        self.deps.provide(ENQUEUE, self.producer.enqueue_by_name)
        self.deps.provide(EVENT_QUEUE, RedisEventQueue(self.link, settings))
        self.http: HealthServer | None = None
        self._stop_requested = asyncio.Event()
        if settings.worker_http_port:
            self.http = HealthServer(
                host=settings.worker_http_host,
                port=settings.worker_http_port,
                metrics=self.metrics,
                redis_ready=lambda: self.link.usable,
                queue_depth=self._queue_depth,
                queue_name=settings.queue_name,
            )
        self.worker = JobWorker(
            link=self.link,
            lock_timeout_s=settings.worker_lock_timeout,
            functions=arq_functions(registry, settings),
            # A burst run drains the queue and exits; schedules would keep refilling it.
            cron_jobs=[] if burst else arq_cron_jobs(registry, settings),
            timezone=UTC,
            queue_name=settings.queue_name,
            redis_pool=self.link.redis,
            burst=burst,
            handle_signals=handle_signals,
            job_completion_wait=max(settings.worker_shutdown_grace, 0.001),
            max_jobs=settings.worker_max_jobs,
            job_timeout=settings.job_timeout + _ARQ_TIMEOUT_SLACK_S,
            keep_result=settings.job_keep_result,
            poll_delay=settings.worker_poll_delay,
            max_tries=settings.job_max_tries,
            ctx={"runner": self.runner},
            job_serializer=serialize,
            job_deserializer=deserialize,
            log_results=False,
        )

    async def _queue_depth(self) -> int:
        return int(await self.link.redis.zcard(self.settings.queue_name))

    def request_stop(self) -> None:
        """What SIGTERM does: stop taking jobs, give running ones the grace period, then exit."""
        self._stop_requested.set()
        if self.worker.main_task is not None:
            self.worker.handle_sig_wait_for_completion(signal.SIGTERM)

    async def run(self) -> int:
        """Run until stopped (or, in burst mode, until the queue is empty); return an exit code."""
        logging.getLogger("arq.worker").addFilter(_QuietArqFailures())
        if self.http is not None:
            self.http.start()
        await self.link.start()
        background = [
            asyncio.create_task(
                publish_forever(self.link, self.metrics.recent, self.worker.token, self.settings.queue_name)
            ),
            asyncio.create_task(self._durability()),
            asyncio.create_task(self.worker.extend_locks_forever()),
        ]
        try:
            await migrate_at_start(self.settings)
            await self.producer.start()
            if not self.link.usable and not await self._redis_or_stop():
                return 0
            # A stop asked for before the main task existed is honoured as soon as it does.
            self.worker.main_task = asyncio.create_task(self.worker.main())
            if self._stop_requested.is_set():
                self.worker.handle_sig_wait_for_completion(signal.SIGTERM)
            await self.worker.main_task
        except asyncio.CancelledError:
            if not self.worker.stopping:
                raise
        finally:
            for task in background:
                task.cancel()
            await self._shutdown()
        return 0

    async def _durability(self) -> None:
        """Relay the spool and reconcile durable jobs, once Postgres answers."""
        while True:
            try:
                pool = await self.deps.get(POSTGRES)
                break
            except PG_DOWN_ERRORS as exc:
                log.warning("Postgres unreachable: spool relay and durable checks wait", error=str(exc))
                await asyncio.sleep(5)
        relay = SpoolRelay(pool, self.link)

        async def wake_relay() -> None:
            relay.wake()

        self.link.on_up(wake_relay)
        reconciler = DurableReconciler(pool, self.link, interval_s=self.settings.durable_check_interval)
        await asyncio.gather(relay.run_forever(), reconciler.run_forever())

    async def _redis_or_stop(self) -> bool:
        """Wait for Redis at start; False if a stop came first."""
        up = asyncio.create_task(self.link.wait_until_up())
        stop = asyncio.create_task(self._stop_requested.wait())
        await asyncio.wait({up, stop}, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        stop.cancel()
        return self.link.usable and not self._stop_requested.is_set()

    async def _shutdown(self) -> None:
        self.worker.stopping = True
        # Bounded: a stop can cancel a command mid-flight, which can leave a pooled connection
        # waiting on a reply that never comes.
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(1.0):
                await self.link.redis.delete(
                    keys.health_check_key(self.settings.queue_name), keys.worker_stats_key(self.worker.token)
                )
        await asyncio.gather(*self.worker.tasks.values(), return_exceptions=True)
        if self.http is not None:
            await self.http.stop()
        await self.producer.close()
        await self.deps.aclose()
        await self.link.aclose()
        log.info(
            "worker stopped",
            complete=self.worker.jobs_complete,
            failed=self.worker.jobs_failed,
            retried=self.worker.jobs_retried,
        )


async def run_worker(settings: Settings, *, burst: bool = False) -> int:
    if not settings.redis_enabled:
        log.error("REDIS_URL is empty: the worker needs Redis; set REDIS_URL=redis://host:6379/0")
        return 2
    return await WorkerService(settings, burst=burst).run()
