"""The worker loop: claim due jobs in batches, run them, record outcomes in batches, and sleep
on a wake-up instead of polling.

    claim (one script: up to N due jobs from the worker's queues, in priority order, with their
           records, try counts and locks; paused queues skipped, caps held)
      -> a task per job (`ClaimedJobs` -> rate limit turn -> `AttemptRunner.attempt`)
      -> `OutcomeRecorder` (one script per batch of finished attempts)

Claim-ahead: while recent attempts have been short (under `WORKER_CLAIM_AHEAD` on average), a
worker claims up to one batch beyond its free slots and holds it; a job that ends hands its slot
to the next held job at once, so the next claim's round trip overlaps running jobs instead of
leaving the loop idle. A held job waits about one short job's time: its lock is extended like a
running job's, it counts against the queue's caps, and a stopping worker gives it back unrun
(neither a try nor an interruption). Long jobs are never claimed ahead, so a busy worker does
not sit on work another worker could start.

With nothing due the worker blocks on BZPOPMIN over its queues' wake keys, which every enqueue
touches in the same script that queues the job, so a job starts within a round trip or two.
One block covers every queue, so the idle cost does not grow with the number of queues. The
block is cut short at the earliest future score (deferred jobs, retries, rate-limit turns,
locks of dead workers expiring) and at the next health write; a block that times out with
nothing due sends the next block and nothing else, so an idle worker costs about one command
per `WORKER_IDLE_BLOCK` seconds. A job of a capped queue that finishes wakes the queue's
workers, so a slot freed by a cap is filled at once.

Redis errors never end the loop: the breaker opens, the worker waits for the probe to see
Redis again and carries on. Finished outcomes wait for Redis rather than being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import structlog

from core.clock import epoch_ms
from core.control import JobControl
from core.errors import BackendError, BackendRefused, BackendUnavailable, CredentialsRefused, ReplyLost
from core.registry import Registry
from settings import Settings
from worker.backend import ClaimBatch, ClaimedJob, Finished, QueueBackend
from worker.engine.claimed import ClaimedJobs
from worker.engine.recorder import OutcomeRecorder
from worker.execution import AttemptRunner
from worker.flow import CancelWatcher, ProgressWriter, QueuePlan, RateLimits, SharedLimiter
from worker.telemetry import Metrics

__all__ = ["JobEngine"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


# How long a stopping worker waits for Redis to record the outcomes of finished jobs.
_RECORD_AT_STOP_S = 5.0
# Weight of the latest attempt in the moving average of attempt times that claim-ahead follows.
_JOB_TIME_WEIGHT = 0.1


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
        self.plan = QueuePlan(settings)
        self.queue = self.plan.health_key_queue  # the queue whose health key this worker writes
        self.burst = burst
        self.token = uuid.uuid4().hex  # marks the in-progress locks this worker holds
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.controls: dict[str, JobControl] = {}  # progress and cancel requests, per running job
        self.running: Counter[str] = Counter()  # running and held jobs per queue, for the caps
        self._held: deque[ClaimedJob] = deque()  # claimed ahead; started as slots free
        self._job_s: float | None = None  # moving average of attempt wall time, for claim-ahead
        self.paused: frozenset[str] = frozenset()  # as the latest claim found them
        self._queue_of: dict[str, str] = {}
        self.stopping = False
        self._totals = metrics.totals
        limits = RateLimits(settings)
        limiter = SharedLimiter(backend, limits) if limits else None
        self._claimed = ClaimedJobs(attempts, registry, limits=limits, limiter=limiter)
        self._progress = ProgressWriter(backend)
        self.cancels = CancelWatcher(backend, lambda: self.controls)
        # Short locks, extended while this worker lives (`extend_locks_forever`): a SIGKILLed
        # worker's jobs become claimable again within WORKER_LOCK_TIMEOUT, whatever their timeout.
        self._lock_ms = int(settings.worker_lock_timeout * 1000)
        self._recorder = OutcomeRecorder(
            backend,
            keep_result_ms=int(settings.job_keep_result * 1000),
            batch_size=settings.worker_batch_size,
            wait_for_redis=self._wait_for_redis,
            capped=self.plan.capped,
        )
        self._stop = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._lost_claims: list[int] = []  # bumped scores of claims whose reply was lost
        self._next_health = 0.0
        self._side_tasks: set[asyncio.Task[None]] = set()  # dead letters of quarantined entries
        self._empty_wakes = 0  # wake-ups in a row that found nothing to do
        self._wake_repaired_at = 0.0
        # Set when Redis refuses this worker's credentials or ACL: the worker stops and says so.
        self.fatal: CredentialsRefused | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True
        self._stop.set()
        self._slot_free.set()

    async def run(self) -> None:
        log.info(
            "worker started",
            queues=self.plan.names if not self.plan.weighted else self.settings.worker_queues,
            max_jobs=self.settings.worker_max_jobs,
            batch_size=self.settings.worker_batch_size,
            idle_block_s=self.settings.worker_idle_block,
            burst=self.burst,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],  # asyncio or uvloop
        )
        self._recorder.start()
        try:
            if not self.backend.usable:
                await self._until_stopped(self.backend.wait_until_up())
            await self._loop()
        finally:
            self._give_back_held()
            await self._finish_running()
            await self._progress.close()
            await self._recorder.close(_RECORD_AT_STOP_S if self.stopping else 3600.0)
            if self._side_tasks:
                await asyncio.gather(*self._side_tasks, return_exceptions=True)

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
        for job_id in [job_id for job_id, task in self.tasks.items() if task.done()]:
            self._task_done(job_id)  # cancelled before its first step, so `_execute` never ran

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self.stopping:
            room = self._room()
            if room <= 0:
                await self._wait_slot()
                continue
            batch = await self._claim(min(room, self.settings.worker_batch_size))
            if batch is None:
                continue
            self.paused = batch.paused
            for job in batch.jobs:
                self._hold(job)
            self._start_held()
            for entry in batch.poison:
                self._side_task(self._claimed.quarantined(entry))
            if batch.more or self.stopping:
                continue
            if await self._woken_for_nothing(batch):
                continue
            if self.burst:
                if not await self._burst_wait(batch):
                    return
            else:
                await self._idle(batch.next_due_ms, batch.capped)

    async def _claim(self, limit: int) -> ClaimBatch | None:
        if self._lost_claims and not await self._release_lost_claims():
            return None
        now_ms = epoch_ms()
        health, ttl_ms = self._health_due()
        try:
            batch = await self.backend.claim(
                self.plan.claim_order(self.running),
                limit=limit,
                lock_ms=self._lock_ms,
                token=self.token,
                now_ms=now_ms,
                health=health,
                health_ttl_ms=ttl_ms,
                health_queue=self.queue,
            )
        except ReplyLost as exc:
            # Our locks may have landed unseen; they carry this score, so they can be found.
            self._lost_claims.append(now_ms + self._lock_ms)
            await self._until_stopped(self._wait_for_redis(exc))
            return None
        except BackendUnavailable as exc:
            await self._until_stopped(self._wait_for_redis(exc))
            return None
        except CredentialsRefused as exc:
            self._stop_on(exc)
            return None
        except BackendRefused as exc:
            # A refusal (OOM, a script error) would repeat on every claim; say so and slow down.
            log.error("redis refused a worker command", error=str(exc))
            await self._until_stopped(asyncio.sleep(1.0))
            return None
        if health:
            self._next_health = time.monotonic() + self.settings.worker_health_interval
        return batch

    def _room(self) -> int:
        """How many jobs the next claim may take: the free slots, plus one batch ahead while
        attempts are short. With jobs held, wait until half a batch is gone, so claims stay big."""
        batch, max_jobs = self.settings.worker_batch_size, self.settings.worker_max_jobs
        ahead = 0
        if self._job_s is not None and self._job_s < self.settings.worker_claim_ahead:
            ahead = min(batch, max_jobs)
        room = max_jobs + ahead - len(self.tasks) - len(self._held)
        if self._held and room < max(1, ahead // 2):
            return 0
        return room

    def _hold(self, job: ClaimedJob) -> None:
        """A claimed job: it holds a slot of its queue's caps and its lock is kept alive."""
        self.controls[job.job_id] = JobControl(job.job_id, self._progress.mark)
        self._queue_of[job.job_id] = job.queue
        self.running[job.queue] += 1
        self._held.append(job)

    def _start_held(self) -> None:
        while self._held and len(self.tasks) < self.settings.worker_max_jobs:
            self._start(self._held.popleft())

    def _start(self, job: ClaimedJob) -> None:
        # No done callback: `_execute` frees the slot itself, a loop turn sooner and one handle
        # less per job. A task cancelled before its first step never runs it; `_finish_running`
        # frees those.
        task = asyncio.get_running_loop().create_task(self._execute(job, self.controls[job.job_id]))
        if not task.done():  # an eager task factory may have run it through already
            self.tasks[job.job_id] = task

    def _task_done(self, job_id: str) -> None:
        self.tasks.pop(job_id, None)
        self._release(job_id)
        if not self.stopping:
            self._start_held()  # the freed slot goes to a held job at once
        self._slot_free.set()

    def _release(self, job_id: str) -> None:
        del self.controls[job_id]
        self.running[self._queue_of.pop(job_id)] -= 1

    def _give_back_held(self) -> None:
        """Stopping: held jobs go back to their queues, due now, counted as neither a try nor an
        interruption (they never started)."""
        now_ms = epoch_ms()
        while self._held:
            job = self._held.popleft()
            self._release(job.job_id)
            self._recorder.add(Finished(job.job_id, run_again_at_ms=now_ms, queue=job.queue, deferred=True))

    async def _execute(self, job: ClaimedJob, control: JobControl) -> None:
        started = time.perf_counter()
        try:
            finished = await self._claimed.run(job, control)
        except asyncio.CancelledError:
            # Stopped past the shutdown grace: due again at once, and not counted as a try.
            self._recorder.add(
                Finished(job.job_id, run_again_at_ms=epoch_ms(), interrupted=True, queue=job.queue)
            )
            raise
        else:
            self._recorder.add(finished)
        finally:
            self._task_done(job.job_id)
        took = time.perf_counter() - started
        average = self._job_s
        self._job_s = took if average is None else average + (took - average) * _JOB_TIME_WEIGHT

    def snapshot_fields(self) -> dict[str, Any]:
        """What this worker's snapshot says beyond its counts: its queues and running jobs."""
        # Held jobs too: claimed and locked, they are in progress for every reader (status()).
        by_queue: dict[str, list[str]] = {}
        for job_id, queue in self._queue_of.items():
            by_queue.setdefault(queue, []).append(job_id)
        return {
            "queues": self.plan.keys,
            "queue_names": self.plan.names,
            "paused": sorted(self.paused),
            "running_ids": list(self._queue_of),
            "running_by_queue": by_queue,
        }

    def _side_task(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _stop_on(self, exc: CredentialsRefused) -> None:
        log.error("redis refuses this worker; stopping", error=str(exc))
        self.fatal = exc
        self.request_stop()

    async def _wait_slot(self) -> None:
        """Until a job task ends (or stop is requested, which sets the event too)."""
        if not self.stopping:
            self._slot_free.clear()
        await self._slot_free.wait()

    # -- waiting for work ----------------------------------------------------------------------

    async def _idle(self, next_due_ms: int | None, capped: frozenset[str] = frozenset()) -> None:
        """Block until woken, a deferred job is due, the health key is due, or stop."""
        while not self.stopping:
            timeout = self.settings.worker_idle_block
            if next_due_ms is not None:
                timeout = min(timeout, (next_due_ms - epoch_ms()) / 1000)
            if capped & self.plan.globally_capped:
                # Slots held by a worker that died come back when its locks lapse, unannounced.
                timeout = min(timeout, 1.0)
            timeout = min(timeout, self._next_health - time.monotonic())
            if timeout <= 0:
                return
            try:
                woken = await self._until_stopped(self.backend.wait_for_wake(self.plan.keys, timeout))
            except BackendUnavailable as exc:
                await self._until_stopped(self._wait_for_redis(exc))
                return
            except CredentialsRefused as exc:
                self._stop_on(exc)
                return
            except BackendRefused as exc:
                # A wake key of the wrong type, written by someone else: make it right again.
                await self._repair_wake(str(exc))
                return
            if woken:
                return

    async def _woken_for_nothing(self, batch: ClaimBatch) -> bool:
        """A wake-up that found nothing due, over and over, means a wake key someone grew with
        many members (each BZPOPMIN returns at once): repair it rather than spin. Paused and
        capped queues are woken by enqueues and finishes with nothing for this worker: not that."""
        if batch.jobs or batch.poison or self.tasks or batch.paused or batch.capped:
            self._empty_wakes = 0
            return False
        self._empty_wakes += 1
        if self._empty_wakes < 3:
            return False
        self._empty_wakes = 0
        await self._repair_wake("wake-ups with nothing to claim")
        return False

    async def _repair_wake(self, why: str) -> None:
        repaired_any = []
        try:
            for queue in self.plan.keys:
                if await self.backend.repair_wake(queue):
                    repaired_any.append(queue)
            repaired = bool(repaired_any)
        except BackendError as exc:
            repaired, why = False, f"{why}; repair failed: {exc}"
        if repaired or time.monotonic() - self._wake_repaired_at > 60:
            # Logged once a minute at most, whatever writes the key.
            log.error("a queue's wake key was not ours; repaired it", queues=repaired_any, reason=why)
            self._wake_repaired_at = time.monotonic()
        if not repaired:
            await self._until_stopped(asyncio.sleep(1.0))

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
            running = [(queue, job_id) for job_id, queue in self._queue_of.items()]
            if not running or not self.backend.usable:
                continue
            try:
                held = await self.backend.extend(running, self.token, self._lock_ms)
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
                released = await self.backend.release(self.plan.keys, self._lost_claims[0], self.token)
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
