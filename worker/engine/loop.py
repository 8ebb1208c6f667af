"""The worker loop: claim due jobs in batches, run them, record outcomes in batches, and sleep
on a wake-up instead of polling.

    claim (one script: up to N due jobs with their records, try counts and locks)
      -> a task per job (`ClaimedJobs` -> `AttemptRunner.attempt`)
      -> `OutcomeRecorder` (one script per batch of finished attempts)

With nothing due the worker blocks on BZPOPMIN on the queue's wake key, which every enqueue
touches in the same script that queues the job, so a job starts within a round trip or two.
The block is cut short at the earliest future score (deferred jobs, retries, locks of dead
workers expiring) and at the next health write; a block that times out with nothing due
sends the next block and nothing else, so an idle worker costs about one command per
`WORKER_IDLE_BLOCK` seconds.

Redis errors never end the loop: the breaker opens, the worker waits for the probe to see
Redis again and carries on. Finished outcomes wait for Redis rather than being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import structlog

from core.clock import epoch_ms
from core.errors import BackendError, BackendRefused, BackendUnavailable, ReplyLost
from core.registry import Registry
from settings import Settings
from worker.backend import ClaimBatch, ClaimedJob, Finished, QueueBackend
from worker.engine.claimed import ClaimedJobs
from worker.engine.recorder import OutcomeRecorder
from worker.execution import AttemptRunner
from worker.telemetry import Metrics

__all__ = ["JobEngine"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


# How long a stopping worker waits for Redis to record the outcomes of finished jobs.
_RECORD_AT_STOP_S = 5.0


class JobEngine:
    """Claims and runs jobs until stopped (or, in burst mode, until the queue is empty)."""

    def __init__(
        self,
        settings: Settings,
        backend: QueueBackend,
        attempts: AttemptRunner,
        registry: Registry,
        metrics: Metrics,
        *,
        burst: bool,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.queue = settings.queue_name
        self.burst = burst
        self.token = uuid.uuid4().hex  # marks the in-progress locks this worker holds
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self._totals = metrics.totals
        self._claimed = ClaimedJobs(attempts, registry, self.queue)
        # Short locks, extended while this worker lives (`extend_locks_forever`): a SIGKILLed
        # worker's jobs become claimable again within WORKER_LOCK_TIMEOUT, whatever their timeout.
        self._lock_ms = int(settings.worker_lock_timeout * 1000)
        self._recorder = OutcomeRecorder(
            backend,
            self.queue,
            keep_result_ms=int(settings.job_keep_result * 1000),
            batch_size=settings.worker_batch_size,
            wait_for_redis=self._wait_for_redis,
        )
        self._stop = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._lost_claims: list[int] = []  # bumped scores of claims whose reply was lost
        self._next_health = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True
        self._stop.set()
        self._slot_free.set()

    async def run(self) -> None:
        log.info(
            "worker started",
            queue=self.queue,
            max_jobs=self.settings.worker_max_jobs,
            batch_size=self.settings.worker_batch_size,
            idle_block_s=self.settings.worker_idle_block,
            burst=self.burst,
        )
        self._recorder.start()
        try:
            if not self.backend.usable:
                await self._until_stopped(self.backend.wait_until_up())
            await self._loop()
        finally:
            await self._finish_running()
            await self._recorder.close(_RECORD_AT_STOP_S if self.stopping else 3600.0)

    async def _finish_running(self) -> None:
        """Give running jobs the shutdown grace, then cancel them (they will run again)."""
        running = list(self.tasks.values())
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.settings.worker_shutdown_grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self.stopping:
            free = self.settings.worker_max_jobs - len(self.tasks)
            if free <= 0:
                await self._wait_slot()
                continue
            batch = await self._claim(min(free, self.settings.worker_batch_size))
            if batch is None:
                continue
            for job in batch.jobs:
                self._start(job)
            if batch.more or self.stopping:
                continue
            if self.burst:
                if not await self._burst_wait(batch):
                    return
            else:
                await self._idle(batch.next_due_ms)

    async def _claim(self, limit: int) -> ClaimBatch | None:
        if self._lost_claims and not await self._release_lost_claims():
            return None
        now_ms = epoch_ms()
        health, ttl_ms = self._health_due()
        try:
            batch = await self.backend.claim(
                self.queue,
                limit=limit,
                lock_ms=self._lock_ms,
                token=self.token,
                now_ms=now_ms,
                health=health,
                health_ttl_ms=ttl_ms,
            )
        except ReplyLost as exc:
            # Our locks may have landed unseen; they carry this score, so they can be found.
            self._lost_claims.append(now_ms + self._lock_ms)
            await self._until_stopped(self._wait_for_redis(exc))
            return None
        except BackendUnavailable as exc:
            await self._until_stopped(self._wait_for_redis(exc))
            return None
        except BackendRefused as exc:
            # A refusal (OOM, NOPERM, ...) would repeat on every claim; say so and slow down.
            log.error("redis refused a worker command", error=str(exc))
            await self._until_stopped(asyncio.sleep(1.0))
            return None
        if health:
            self._next_health = time.monotonic() + self.settings.worker_health_interval
        return batch

    def _start(self, job: ClaimedJob) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(job))
        self.tasks[job.job_id] = task
        task.add_done_callback(lambda _: self._task_done(job.job_id))

    def _task_done(self, job_id: str) -> None:
        del self.tasks[job_id]
        self._slot_free.set()

    async def _execute(self, job: ClaimedJob) -> None:
        try:
            finished = await self._claimed.run(job)
        except asyncio.CancelledError:
            self._recorder.add(Finished(job.job_id, run_again_at_ms=epoch_ms()))
            raise
        except Exception:
            # A bug on our side, not the job's (the attempt path catches those): keep the worker
            # going; the job runs again when its lock expires, and counts against its tries.
            log.exception("could not finish a job; it will run again", job_id=job.job_id)
            return
        self._recorder.add(finished)

    async def _wait_slot(self) -> None:
        """Until a job task ends (or stop is requested, which sets the event too)."""
        if not self.stopping:
            self._slot_free.clear()
        await self._slot_free.wait()

    # -- waiting for work ----------------------------------------------------------------------

    async def _idle(self, next_due_ms: int | None) -> None:
        """Block until woken, a deferred job is due, the health key is due, or stop."""
        while not self.stopping:
            timeout = self.settings.worker_idle_block
            if next_due_ms is not None:
                timeout = min(timeout, (next_due_ms - epoch_ms()) / 1000)
            timeout = min(timeout, self._next_health - time.monotonic())
            if timeout <= 0:
                return
            try:
                woken = await self._until_stopped(self.backend.wait_for_wake(self.queue, timeout))
            except BackendUnavailable as exc:
                await self._until_stopped(self._wait_for_redis(exc))
                return
            except BackendRefused as exc:
                # A wake key of the wrong type, say: claims still work, so poll instead of blocking.
                log.error("redis refused the idle wait; polling until it is repaired", error=str(exc))
                await self._until_stopped(asyncio.sleep(1.0))
                return
            if woken:
                return

    async def _burst_wait(self, batch: ClaimBatch) -> bool:
        """In burst mode: False when the queue is empty and nothing runs, else wait a little."""
        if not self.tasks and not batch.jobs and batch.next_due_ms is None:
            return False
        if self.tasks:
            await self._wait_slot()
        elif self._recorder.pending:
            # Our own finished jobs still sit in the queue (scored in the future) until recorded.
            await self._until_stopped(self._recorder.wait_idle())
        elif batch.next_due_ms is not None:
            delay = min(max((batch.next_due_ms - epoch_ms()) / 1000, 0.001), 1.0)
            await self._until_stopped(asyncio.sleep(delay))
        return True

    def _health_due(self) -> tuple[str | None, int]:
        if time.monotonic() < self._next_health:
            return None, 0
        interval = self.settings.worker_health_interval
        totals = self._totals
        text = (
            f"{datetime.now():%b-%d %H:%M:%S} j_complete={totals['complete']} j_failed={totals['failed']} "
            f"j_retried={totals['retry']} j_ongoing={len(self.tasks)}"
        )
        return text, int((interval + 10) * 1000)

    async def extend_locks_forever(self) -> None:
        """Keep running jobs' locks alive, a third of their lifetime at a time; idle, send nothing."""
        while True:
            await asyncio.sleep(self._lock_ms / 3000)
            running = list(self.tasks)
            if not running or not self.backend.usable:
                continue
            try:
                held = await self.backend.extend(self.queue, running, self.token, self._lock_ms)
            except BackendError:
                continue  # the claim loop deals with outages
            if held < len(running):
                log.warning("running jobs lost their lock and may run twice", lost=len(running) - held)

    # -- outages -------------------------------------------------------------------------------

    async def _wait_for_redis(self, exc: BaseException) -> None:
        self.backend.report_failure(exc)
        await self.backend.wait_until_up()

    async def _release_lost_claims(self) -> bool:
        """Undo claims whose reply was lost, so their jobs need not wait for the locks to expire."""
        while self._lost_claims:
            try:
                released = await self.backend.release(self.queue, self._lost_claims[0], self.token)
            except BackendUnavailable as exc:
                await self._until_stopped(self._wait_for_redis(exc))
                return False
            self._lost_claims.pop(0)
            log.info("released job locks whose claim reply was lost", released=released)
        return True

    async def _until_stopped(self, waiting: Awaitable[T]) -> T | None:
        """Await `waiting` unless stop is requested first (then cancel it and return None)."""
        if self.stopping:
            if asyncio.iscoroutine(waiting):
                waiting.close()
            return None
        task: asyncio.Future[Any] = asyncio.ensure_future(waiting)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError):
                await task
            return None
        result: T = task.result()
        return result
