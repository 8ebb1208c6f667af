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
from datetime import UTC
from typing import Any

import structlog
from arq.cron import CronJob, cron
from arq.jobs import deserialize_result
from arq.utils import poll
from arq.worker import Function, Retry, Worker, func

from jobs import REGISTRY
from jobs.analytics.queue import EVENT_QUEUE
from jobs.deps import Deps
from jobs.enqueue import ENQUEUE
from jobs.registry import JobDefinition, Registry
from settings import Settings
from worker import keys
from worker.cache import make_cache
from worker.errors import JobFailed
from worker.event_queue import RedisEventQueue
from worker.migrate import migrate_at_start
from worker.producer import Producer
from worker.redis_link import REDIS_DOWN_ERRORS, RedisLink
from worker.runner import JobRunner
from worker.serializer import deserialize, error_from_payload, serialize

__all__ = ["JobWorker", "WorkerService", "arq_cron_jobs", "arq_functions", "run_worker"]

log = structlog.get_logger("worker.service")

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

    def __init__(self, *, link: RedisLink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = link
        self.stopping = False

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
        except REDIS_DOWN_ERRORS as exc:
            await self._wait_for_redis(exc)

    async def _wait_for_redis(self, exc: BaseException) -> None:
        self.link.report_failure(exc)
        await self.link.wait_until_up()

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
        error: dict[str, Any] = {}
        if result_data:
            with contextlib.suppress(Exception):
                error = (
                    error_from_payload(deserialize_result(result_data, deserializer=deserialize).result) or {}
                )
        log.error(
            "job finished",
            job_id=job_id,
            outcome="failed",
            mode="queued",
            error_type=error.get("type"),
            error=error.get("message"),
            kind="permanent",
        )
        parent = super().finish_failed_job
        await self._record("failure", job_id, lambda: parent(job_id, result_data))

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        self.stopping = True
        log.info(
            "shutdown requested, finishing running jobs",
            signal=signal.Signals(signum).name,
            running=sum(not t.done() for t in self.tasks.values()),
            grace_s=self._job_completion_wait,
        )
        super().handle_sig_wait_for_completion(signum)


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
        self.settings = settings
        self.link = RedisLink(settings, role="worker", socket_timeout=settings.worker_redis_socket_timeout)
        self.deps = Deps(settings, cache=make_cache(settings))
        self.runner = JobRunner(settings, self.deps)
        # Jobs queue follow-up jobs (emails) through a producer, inline while Redis is down.
        self.producer = Producer(settings, registry=registry)
        self.deps.provide(ENQUEUE, self.producer.enqueue_by_name)
        self.deps.provide(EVENT_QUEUE, RedisEventQueue(self.link, settings))
        self.worker = JobWorker(
            link=self.link,
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

    def request_stop(self) -> None:
        """What SIGTERM does: stop taking jobs, give running ones the grace period, then exit."""
        self.worker.handle_sig_wait_for_completion(signal.SIGTERM)

    async def run(self) -> int:
        """Run until stopped (or, in burst mode, until the queue is empty); return an exit code."""
        logging.getLogger("arq.worker").addFilter(_QuietArqFailures())
        await self.link.start()
        try:
            await migrate_at_start(self.settings)
            await self.producer.start()
            if not self.link.usable:
                await self.link.wait_until_up()
            if not self.worker.stopping:  # a stop requested during start-up
                await self.worker.async_run()
        except asyncio.CancelledError:
            if not self.worker.stopping:
                raise
        finally:
            await self._shutdown()
        return 0

    async def _shutdown(self) -> None:
        self.worker.stopping = True
        # Bounded: arq cancels its poll loop mid-command on stop (a cron enqueue, say), which can
        # leave a pooled connection waiting on a reply that never comes.
        with contextlib.suppress(*REDIS_DOWN_ERRORS):
            async with asyncio.timeout(1.0):
                await self.link.redis.delete(keys.health_check_key(self.settings.queue_name))
        await asyncio.gather(*self.worker.tasks.values(), return_exceptions=True)
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
