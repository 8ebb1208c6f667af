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
from jobs.deps import Deps
from jobs.registry import Registry
from settings import Settings
from worker import keys
from worker.cache import make_cache
from worker.engine import JobEngine
from worker.queue_store import QueueStore
from worker.redis_link import REDIS_ERRORS, RedisLink
from worker.runner import JobRunner

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
        self.runner = JobRunner(settings, self.deps)
        self.store = QueueStore(self.link, settings.queue_name)
        self.worker = JobEngine(settings, self.store, self.runner, registry, burst=burst)
        self._handle_signals = handle_signals

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
        await self.link.start()
        try:
            await self.worker.run()
        finally:
            await self._shutdown()
        return 0

    async def _shutdown(self) -> None:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self.link.usable:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.link.redis.delete(keys.health_check_key(self.settings.queue_name))
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
