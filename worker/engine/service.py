"""One worker process's lifetime: the runtime, the job engine, the background loops, and a
clean shutdown.

The engine (`worker.engine.loop`) claims, runs and records jobs in arq's data model; the attempt
path is the inline executor's, so retries, timeouts and log lines match. Redis outages never
end the process: the worker logs `redis unavailable` once, waits for the probe to see Redis
again (`redis connected`) and carries on with the same process and jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from core.enqueue import ENQUEUE
from core.errors import BackendError, BackendRefused
from core.registry import Registry
from jobs import registry_for
from settings import Settings
from worker.engine.loop import JobEngine
from worker.engine.scheduler import Scheduler
from worker.engine.snapshots import publish_forever
from worker.ledger import PG_DOWN_ERRORS, DurableReconciler, SpoolRelay
from worker.ledger.migrate import migrate_at_start
from worker.plugins import Plugins
from worker.producer import Producer
from worker.runtime import Runtime
from worker.telemetry.health import HealthServer

__all__ = ["WorkerService", "run_worker", "settle_heap"]

log = structlog.get_logger(__name__)


class WorkerService:
    """Build once, `await run()`; `request_stop()` (or SIGTERM/SIGINT) ends it gracefully."""

    def __init__(
        self,
        settings: Settings,
        *,
        burst: bool = False,
        registry: Registry | None = None,
        handle_signals: bool = True,
        group: dict[str, int] | None = None,
        freeze_heap: bool = False,
    ) -> None:
        self.settings = settings
        self._freeze_heap = freeze_heap  # see `settle_heap`; the command line's worker does
        # Under `--processes N`: the supervisor's pid and this child's index, for `stats`.
        self._group = group or {}
        self._http_up = False
        # Given (tests, benches), or ours with the modules in JOB_MODULES.
        registry = registry if registry is not None else registry_for(settings)
        self.runtime = Runtime.build(
            settings, registry, role="worker", socket_timeout=settings.worker_redis_socket_timeout
        )
        self.backend = self.runtime.backend
        self.metrics = self.runtime.metrics
        self.worker = JobEngine(
            settings, self.backend, self.runtime.attempts, registry, self.metrics, burst=burst
        )
        self._handle_signals = handle_signals
        self._burst = burst
        self._scheduler = Scheduler(registry, self.backend, settings)
        self._plugins = Plugins()
        # Jobs queue follow-up jobs (emails) through a producer, inline while Redis is down. It
        # shares the worker's runtime: one connection pool of each kind, one set of metrics.
        self.producer = Producer(settings, registry=registry, runtime=self.runtime)
        self.runtime.deps.provide(ENQUEUE, self.producer.enqueue_by_name)
        self.http: HealthServer | None = None
        if settings.worker_http_port:
            self.http = HealthServer(
                host=settings.worker_http_host,
                port=settings.worker_http_port,
                metrics=self.metrics,
                ready=lambda: self.backend.usable,
                queue_depth=self._queue_depth,
            )

    def _snapshot_fields(self) -> dict[str, Any]:
        """The engine's fields, plus where this worker serves health (None: nowhere) and its
        place in a `--processes` group, so `stats` tells the processes of one machine apart."""
        port = self.http.port if self.http is not None and self._http_up else None
        return {**self.worker.snapshot_fields(), "http_port": port, **self._group}

    async def _queue_depth(self) -> dict[str, int]:
        depth = {}
        for name, key in zip(self.worker.plan.names, self.worker.plan.keys, strict=True):
            counts = await self.backend.counts(key)
            depth[name] = counts.queued + counts.deferred
        return depth

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
            self._http_up = self.http.start()
        background: list[asyncio.Task[None]] = []
        try:
            try:
                await self.backend.start()
            except BackendRefused as exc:
                log.error(
                    "redis refuses this worker; not starting",
                    url=self.settings.redis_url_redacted,
                    error=str(exc),
                )
                return 2
            self.backend.on_up(self._plugins.redis_back)
            await migrate_at_start(self.settings)
            await self.producer.start()
            await self._plugins.start(self.runtime, "worker", self.producer.enqueue_by_name)
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                "snapshots": lambda: publish_forever(
                    self.backend,
                    self.metrics.recent,
                    self.worker.token,
                    self.worker.queue,
                    self._snapshot_fields,
                ),
                "durability": self._durability,
                "lock extension": self.worker.extend_locks_forever,
                "cancel requests": self.worker.cancels.run_forever,
            }
            if not self._burst:  # a burst run drains the queue and exits; schedules would refill it
                loops["schedules"] = self._scheduler.run_forever
            crashed = self.report_crash
            background = [
                asyncio.create_task(_supervised(name, loop, crashed)) for name, loop in loops.items()
            ]
            if self._freeze_heap:
                settle_heap()
            await self.worker.run()
        finally:
            for task in background:
                task.cancel()
            await self._shutdown()
        return 2 if self.worker.fatal is not None else 0

    def report_crash(self, exc: BaseException, where: str) -> None:
        """A fault of the worker itself: to Sentry when SENTRY_DSN is set (the log has it anyway)."""
        errors = self.runtime.observability.errors
        if errors is not None:
            errors.crash(exc, where=where)

    async def _durability(self) -> None:
        """Relay the spool and reconcile durable jobs, once Postgres answers."""
        ledger = self.runtime.ledger
        while True:
            try:
                await ledger.pool()
                break
            except PG_DOWN_ERRORS as exc:
                log.warning("Postgres unreachable: spool relay and durable checks wait", error=str(exc))
                await asyncio.sleep(5)
        relay = SpoolRelay(ledger, self.backend)

        async def wake_relay() -> None:
            relay.wake()

        self.backend.on_up(wake_relay)
        reconciler = DurableReconciler(ledger, self.backend, interval_s=self.settings.durable_check_interval)
        await asyncio.gather(relay.run_forever(), reconciler.run_forever())

    async def _shutdown(self) -> None:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self.backend.usable:
            with contextlib.suppress(BackendError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.backend.forget_worker(self.worker.queue, self.worker.token)
        if self.http is not None:
            await self.http.stop()
        try:
            await self._plugins.close()
        finally:
            await self.producer.close()
            await self.runtime.aclose()
            totals = self.metrics.totals
            log.info(
                "worker stopped",
                complete=totals["complete"],
                failed=totals["failed"],
                retried=totals["retry"],
            )


async def _supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    crashed: Callable[[BaseException, str], None] | None = None,
) -> None:
    """Run a background loop for the worker's life: a failure is logged (and reported) and the
    loop restarted (after 1 s, doubling to 60 s while it keeps failing), never left unread."""
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if time.monotonic() - started > 60:
                delay = 1.0  # it had been running fine for a while
            log.error(
                "background task failed; restarting it",
                task=name,
                error=f"{type(exc).__name__}: {exc}",
                restart_in_s=delay,
            )
            if crashed is not None:
                crashed(exc, f"worker: {name}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


def settle_heap() -> None:
    """Once the worker is built: collect, then move every object alive now (modules, the
    registry and its models, settings, pools) out of the garbage collector's sight. They live as
    long as the process, and every full collection would walk them again (about 25 ms each, a
    few every 10,000 jobs) while the jobs wait. A process-wide change, so the command line's
    worker asks for it; a worker embedded in an application (or a test) does not."""
    gc.collect()
    gc.freeze()


async def run_worker(settings: Settings, *, burst: bool = False, group: dict[str, int] | None = None) -> int:
    if not settings.redis_enabled:
        log.error("REDIS_URL is empty: the worker needs Redis; set REDIS_URL=redis://host:6379/0")
        return 2
    service = WorkerService(settings, burst=burst, group=group, freeze_heap=True)
    try:
        return await service.run()
    except Exception as exc:  # the process is going down: report it, then let it raise
        service.report_crash(exc, "worker")
        errors = service.runtime.observability.errors
        if errors is not None:
            await errors.flush()
        raise
