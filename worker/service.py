"""One worker process's lifetime: Redis link, dependencies, the job engine, clean shutdown.

The engine (`worker.engine`) claims, runs and records jobs in arq's data model; `JobRunner`
runs each attempt, so retries, timeouts and log lines match the inline runner. Redis outages
never end the process: the worker logs `redis unavailable` once, waits for the probe to see
Redis again (`redis connected`) and carries on with the same process and jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from jobs import REGISTRY
from jobs.analytics.queue import EVENT_QUEUE
from jobs.deps import POSTGRES, Deps
from jobs.enqueue import ENQUEUE
from jobs.registry import Registry
from settings import Settings
from worker import keys
from worker.cache import make_cache
from worker.engine import JobEngine
from worker.event_queue import RedisEventQueue
from worker.http import HealthServer
from worker.metrics import Metrics
from worker.migrate import migrate_at_start
from worker.producer import Producer
from worker.queue_store import QueueStore
from worker.reconciler import DurableReconciler
from worker.redis_link import REDIS_ERRORS, RedisLink
from worker.runner import JobRunner
from worker.scheduler import Scheduler
from worker.spool import PG_DOWN_ERRORS, SpoolRelay
from worker.stats import publish_forever

__all__ = ["WorkerService", "run_worker"]

log = structlog.get_logger("worker.service")


class WorkerService:
    """Build once, `await run()`; `request_stop()` (or SIGTERM/SIGINT) ends it gracefully."""

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
        self.metrics = Metrics()
        self.metrics.watch_breaker(lambda: not self.link.usable)
        self.runner = JobRunner(settings, self.deps, self.metrics)
        self.store = QueueStore(self.link, settings.queue_name)
        self.worker = JobEngine(settings, self.store, self.runner, registry, burst=burst)
        self._handle_signals = handle_signals
        self._burst = burst
        self._scheduler = Scheduler(registry, self.store)
        # Jobs queue follow-up jobs (emails) through a producer, inline while Redis is down. It
        # shares the worker's Redis link and dependencies: one connection pool of each.
        self.producer = Producer(settings, registry=registry, link=self.link, deps=self.deps)
        self.deps.provide(ENQUEUE, self.producer.enqueue_by_name)
        self.deps.provide(EVENT_QUEUE, RedisEventQueue(self.link, settings))
        self.http: HealthServer | None = None
        if settings.worker_http_port:
            self.http = HealthServer(
                host=settings.worker_http_host,
                port=settings.worker_http_port,
                metrics=self.metrics,
                redis_ready=lambda: self.link.usable,
                queue_depth=self._queue_depth,
                queue_name=settings.queue_name,
            )

    async def _queue_depth(self) -> int:
        return int(await self.link.redis.zcard(self.settings.queue_name))

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """What SIGTERM does: stop taking jobs, give running ones the grace period, then exit."""
        if self.worker.stopping:
            return
        log.info(
            "shutdown requested, finishing running jobs",
            signal=signal.Signals(signum).name,
            running=len(self.worker.tasks),
            grace_s=self.settings.worker_shutdown_grace,
        )
        self.worker.request_stop()

    async def run(self) -> int:
        """Run until stopped (or, in burst mode, until the queue is empty); return an exit code."""
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop, signum)
        if self.http is not None:
            self.http.start()
        await self.link.start()
        background: list[asyncio.Task[None]] = []
        try:
            await migrate_at_start(self.settings)
            await self.producer.start()
            background = [
                asyncio.create_task(
                    publish_forever(
                        self.link, self.metrics.recent, self.worker.token, self.settings.queue_name
                    )
                ),
                asyncio.create_task(self._durability()),
                asyncio.create_task(self.worker.extend_locks_forever()),
            ]
            if not self._burst:  # a burst run drains the queue and exits; schedules would refill it
                background.append(asyncio.create_task(self._scheduler.run_forever()))
            await self.worker.run()
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

    async def _shutdown(self) -> None:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self.link.usable:
            with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.link.redis.delete(
                        keys.health_check_key(self.settings.queue_name),
                        keys.worker_stats_key(self.worker.token),
                    )
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
