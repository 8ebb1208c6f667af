"""What each page shows, read from the queue backend (Redis) and the ledger (Postgres).

Every read is bounded: queue counts are ZCARD/ZCOUNT, a page of jobs is one script over one
range of the queue, running jobs and workers come from the workers' snapshots, dead letters and
the spool are index scans of one page, counts stop at a cap. Nothing scans the keyspace.
A page is still drawn when Redis or Postgres is down: the part that could not be read says why
(the dashboard is most needed during the outage it shows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import orjson

from core.errors import BackendError
from core.registry import Registry, Schedule
from settings import Settings
from worker.backend import JobState, JobView, LinkState, QueueCounts
from worker.engine.scheduler import latest_run, next_run
from worker.engine.snapshots import PUBLISH_IDLE_S
from worker.ledger import PG_DOWN_ERRORS, DeadLetter, InlineOutcome, SpooledJob, reports
from worker.ops.http.dashboard import charts, controls
from worker.ops.http.dashboard.cost import CommandRate, RedisCost
from worker.ops.http.dashboard.masking import Masker
from worker.ops.stats import readable_snapshot
from worker.producer import Producer

__all__ = [
    "LIST_STATES",
    "PAGE_SIZE",
    "JobDetail",
    "JobRow",
    "JobsPage",
    "Overview",
    "ScheduleRow",
    "Sources",
    "WorkerRow",
    "job_detail",
    "jobs_page",
    "overview",
    "schedules",
    "workers",
]

T = TypeVar("T")

PAGE_SIZE = 50
# States a list can show: the queue's own three, the spool, and the dead letters (every job
# that failed for good is one). Finished jobs are not indexed: look one up by id.
LIST_STATES = ("queued", "deferred", "in_progress", "spooled", "dead")
# Filtering queued or deferred jobs by name reads records in order (there is no per-name index):
# at most this many per request.
FILTER_SCAN_LIMIT = 5_000
_SCAN_CHUNK = 500
# Deepest page of the queue a list shows. Redis finds a page of a score range by walking to its
# offset (O(offset), ~0.15 ms per 1,000 entries, blocking Redis meanwhile); a page by rank is
# O(log N) but needs ZRANGE, which the least-privilege producer user does not have.
MAX_QUEUE_OFFSET = 100_000
# A worker that has not reported for longer than its idle interval (plus slack) may be gone.
_STALE_AFTER_S = PUBLISH_IDLE_S + 60
# A spooled job older than this while Redis is up means no relay is moving the spool.
_RELAY_STALLED_AFTER_S = 30.0
# What a read may fail with that a page reports instead of failing.
_READ_ERRORS: tuple[type[BaseException], ...] = (BackendError, *PG_DOWN_ERRORS, asyncpg.PostgresError)


@dataclass(frozen=True)
class Sources:
    """Where pages read from: the service's producer (its backend and ledger) and settings."""

    producer: Producer
    settings: Settings
    registry: Registry
    masker: Masker
    rate: CommandRate

    def problem(self, what: str, exc: BaseException) -> str:
        """One line for a part of a page that could not be read, secrets cut out."""
        if isinstance(exc, BackendError):
            where = "Redis"
        elif isinstance(exc, PG_DOWN_ERRORS):
            where = "Postgres unreachable"
        else:
            where = "Postgres"
        return self.masker.text(f"{what}: {where}: {type(exc).__name__}: {exc}")[:300]


async def _read(sources: Sources, what: str, call: Awaitable[T], problems: list[str]) -> T | None:
    """`call`'s value, or None with a line in `problems` when Redis or Postgres failed."""
    try:
        return await call
    except _READ_ERRORS as exc:
        problems.append(sources.problem(what, exc))
        return None


def _collapse(problems: list[str]) -> list[str]:
    """One line per distinct failure: "queue counts, workers: Redis: NotSent: ..." rather than
    the same outage once per part of the page."""
    parts: dict[str, list[str]] = {}
    for line in problems:
        what, _, cause = line.partition(": ")
        parts.setdefault(cause, []).append(what)
    return [f"{', '.join(whats)}: {cause}" for cause, whats in parts.items()]


def _parse_snapshots(raws: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    """Snapshots of our workers, and how many entries were not (forged or broken)."""
    out, malformed = [], 0
    for raw in raws:
        try:
            snapshot = orjson.loads(raw)
        except orjson.JSONDecodeError:
            malformed += 1
            continue
        if readable_snapshot(snapshot):
            out.append(snapshot)
        else:
            malformed += 1
    return out, malformed


# -- overview ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    name: str
    counts: QueueCounts | None
    failed_hour: int
    paused: bool


@dataclass(frozen=True)
class Relay:
    state: str  # idle, relaying, holding, stalled, unknown
    detail: str


@dataclass(frozen=True)
class Overview:
    queues: list[QueueRow]
    dead: reports.BoundedCount | None
    workers_alive: int
    workers_stale: int
    malformed_snapshots: int
    breaker: LinkState
    inline: reports.InlineCounts | None
    queued_done_hour: int
    spool: reports.SpoolSummary | None
    relay: Relay
    cost: RedisCost | None
    redis_commands_per_refresh: int
    jobs: list[charts.JobHour]
    total: charts.JobHour
    chart: charts.Chart
    problems: list[str] = field(default_factory=list)

    @property
    def inline_share(self) -> float | None:
        if self.inline is None:
            return None
        inline = self.inline.complete + self.inline.failed
        everything = inline + self.queued_done_hour
        return inline / everything if everything else 0.0


def redis_commands_per_overview(queues: int) -> int:
    """Redis commands one overview render sends: per queue ZCARD, ZCOUNT, the snapshot index
    and snapshots (for its running jobs) and its pause flag; once more the snapshots, and one
    INFO."""
    return 5 * queues + 3


def _consumed(snapshot: dict[str, Any]) -> list[str]:
    """The queues a worker's snapshot says it consumes (older workers name only one)."""
    found = snapshot.get("queues")
    return [q for q in found if isinstance(q, str)] if isinstance(found, list) else []


async def overview(sources: Sources) -> Overview:
    backend, ledger, settings = sources.producer.backend, sources.producer.ledger, sources.settings
    problems: list[str] = []
    names = controls.queue_names(settings)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    redis_part = asyncio.gather(
        asyncio.gather(*(_read(sources, f"queue {q}", backend.counts(q), problems) for q in names)),
        _read(sources, "workers", backend.worker_snapshots(), problems),
        _read(sources, "Redis commands", backend.command_stats(), problems),
        _read(sources, "paused queues", controls.paused_queues(sources.producer), problems),
    )
    postgres_part = asyncio.gather(
        _read(sources, "dead letters", reports.dead_letter_count(ledger), problems),
        _read(sources, "spool", reports.spool_summary(ledger), problems),
        _read(sources, "inline runs", reports.inline_counts_since(ledger, hour_ago), problems),
    )
    (counts, raw_snapshots, stats, paused), (dead, spool, inline) = await asyncio.gather(
        redis_part, postgres_part
    )
    snapshots, malformed = _parse_snapshots(raw_snapshots or [])
    now = time.time()
    ours = [s for s in snapshots if s["queue"] in names or set(_consumed(s)) & set(names)]
    hours = charts.hour_of_snapshots(ours, now)
    total = charts.total_of(hours)
    alive = [s for s in ours if now - float(s["at"]) <= _STALE_AFTER_S]
    queues = []
    for name, count in zip(names, counts, strict=True):
        of_queue = charts.hour_of_snapshots([s for s in ours if name in (_consumed(s) or [s["queue"]])], now)
        queues.append(QueueRow(name, count, sum(sum(h.failed) for h in of_queue), name in (paused or set())))
    return Overview(
        queues=queues,
        dead=dead,
        workers_alive=len(alive),
        workers_stale=len(ours) - len(alive),
        malformed_snapshots=malformed,
        breaker=backend.state,
        inline=inline,
        queued_done_hour=total.done,
        spool=spool,
        relay=_relay(spool, backend.state, len(alive)),
        cost=sources.rate.add(stats) if stats is not None else None,
        redis_commands_per_refresh=redis_commands_per_overview(len(names)),
        jobs=hours,
        total=total,
        chart=charts.chart(total, width=720, height=140, now=now),
        problems=_collapse(problems),
    )


def _relay(spool: reports.SpoolSummary | None, redis: LinkState, workers: int) -> Relay:
    if spool is None:
        return Relay("unknown", "the spool could not be read")
    if spool.backlog.count == 0:
        return Relay("idle", "the spool is empty")
    if redis is not LinkState.UP:
        return Relay("holding", "Redis is down here: spooled jobs wait for it to come back")
    age = (datetime.now(UTC) - spool.oldest_created_at).total_seconds() if spool.oldest_created_at else 0.0
    if age <= _RELAY_STALLED_AFTER_S:
        return Relay("relaying", f"the oldest spooled job has waited {age:.0f} s")
    fix = (
        "no worker is reporting: start one (python -m worker run)"
        if workers == 0
        else "see the workers' logs"
    )
    return Relay("stalled", f"the oldest spooled job has waited {age:.0f} s while Redis is up; {fix}")


# -- lists of jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str | None
    state: str
    queue: str | None
    at: datetime | None  # enqueued, due, failed: whatever `at_label` says
    at_label: str
    tries: int | None = None
    error: dict[str, Any] | None = None
    problem: str | None = None


@dataclass(frozen=True)
class JobsPage:
    state: str
    queue: str
    name: str | None
    page: int
    rows: list[JobRow]
    total: int | None  # jobs in this state (None: unknown, e.g. when filtering by name)
    total_capped: bool
    has_next: bool
    note: str | None = None
    problems: list[str] = field(default_factory=list)


def _ms(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


def _pending_row(view: JobView) -> JobRow:
    record = view.record
    if view.state is JobState.DEFERRED:
        at, label = _ms(view.score_ms), "due"
    else:
        at, label = _ms(record.enqueue_ms) if record else None, "enqueued"
    return JobRow(
        view.job_id,
        record.name if record else None,
        view.state.value,
        view.queue,
        at,
        label,
        tries=record.job_try if record else None,
        problem=view.problem,
    )


def _dead_row(letter: DeadLetter) -> JobRow:
    return JobRow(
        letter.job_id, letter.name, "dead", None, letter.failed_at, "failed", letter.tries, letter.error
    )


def _spooled_row(job: SpooledJob) -> JobRow:
    return JobRow(job.job_id, job.name, "spooled", job.queue, job.run_at, "runs at")


async def jobs_page(sources: Sources, *, state: str, queue: str, name: str | None, page: int) -> JobsPage:
    """A page of jobs in `state` (one of `LIST_STATES`), optionally of one job name."""
    offset = (page - 1) * PAGE_SIZE
    problems: list[str] = []
    ledger = sources.producer.ledger
    rows: list[JobRow] = []
    count: reports.BoundedCount | None = None
    note = None
    if state == "dead":
        call = reports.dead_letter_page(ledger, job_name=name, offset=offset, limit=PAGE_SIZE + 1)
        rows = [_dead_row(d) for d in await _read(sources, "dead letters", call, problems) or []]
        count = await _read(
            sources, "dead letters", reports.dead_letter_count(ledger, job_name=name), problems
        )
    elif state == "spooled":
        call_ = reports.spool_page(ledger, job_name=name, offset=offset, limit=PAGE_SIZE + 1)
        rows = [_spooled_row(j) for j in await _read(sources, "spool", call_, problems) or []]
        summary = await _read(sources, "spool", reports.spool_summary(ledger), problems)
        count = summary.backlog if summary is not None and name is None else None
    else:
        try:
            views, count, note = await _pending(sources, queue, JobState(state), name, offset)
            rows = [_pending_row(v) for v in views]
        except BackendError as exc:
            problems.append(sources.problem("jobs", exc))
    return JobsPage(
        state=state,
        queue=queue,
        name=name,
        page=page,
        rows=rows[:PAGE_SIZE],
        total=count.count if count is not None else None,
        total_capped=count.capped if count is not None else False,
        has_next=len(rows) > PAGE_SIZE,
        note=note,
        problems=_collapse(problems),
    )


async def _pending(
    sources: Sources, queue: str, state: JobState, name: str | None, offset: int
) -> tuple[list[JobView], reports.BoundedCount | None, str | None]:
    """Queued, deferred or running jobs: a page, the count in that state, and a note."""
    backend = sources.producer.backend
    if name is None:
        counts = await backend.counts(queue)
        by_state = {"queued": counts.queued, "deferred": counts.deferred, "in_progress": counts.in_progress}
        total = reports.BoundedCount(by_state[state.value], False)
        if offset >= MAX_QUEUE_OFFSET and state is not JobState.IN_PROGRESS:
            note = (
                f"Pages past {MAX_QUEUE_OFFSET // PAGE_SIZE:,} are not shown: Redis would walk "
                f"{offset:,} entries to reach one, holding up the workers meanwhile. Find a job by id, "
                "or filter by name."
            )
            return [], total, note
        views = await backend.jobs(queue, state, offset=offset, limit=PAGE_SIZE + 1)
        return views, total, None
    if state is JobState.IN_PROGRESS:  # from the workers' snapshots: at most the workers' slots
        views = await backend.jobs(queue, state, offset=0, limit=1_000_000)
        matching = [v for v in views if v.record is not None and v.record.name == name]
        return matching[offset : offset + PAGE_SIZE + 1], None, None
    # No index by name: read the queue in order, in chunks, up to the scan limit.
    found: list[JobView] = []
    scanned = 0
    while scanned < FILTER_SCAN_LIMIT and len(found) < offset + PAGE_SIZE + 1:
        chunk = await backend.jobs(queue, state, offset=scanned, limit=_SCAN_CHUNK)
        found += [v for v in chunk if v.record is not None and v.record.name == name]
        scanned += _SCAN_CHUNK
        if len(chunk) < _SCAN_CHUNK:
            return found[offset : offset + PAGE_SIZE + 1], None, None
    note = (
        f"Filtering by name reads the queue in order (it has no index by name): this page looked "
        f"at the first {scanned:,} {state.value.replace('_', ' ')} jobs."
    )
    return found[offset : offset + PAGE_SIZE + 1], None, note


# -- one job -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobDetail:
    job_id: str
    found: bool
    state: str
    name: str | None
    queue: str | None
    mode: str | None
    tries: int | None
    args_json: str | None
    result_json: str | None
    error: dict[str, Any] | None
    trace_id: str | None
    timeline: list[tuple[str, datetime | None]]
    progress: tuple[float, str | None] | None
    problem: str | None
    problems: list[str]

    @property
    def retryable(self) -> bool:
        return self.state in ("failed", "dead")

    @property
    def cancellable(self) -> bool:
        return self.state in ("queued", "deferred")


def _trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else None


async def _ledger_rows(
    sources: Sources, job_id: str, problems: list[str]
) -> tuple[SpooledJob | None, DeadLetter | None, InlineOutcome | None]:
    ledger = sources.producer.ledger

    async def rows() -> tuple[SpooledJob | None, DeadLetter | None, InlineOutcome | None]:
        return (
            await ledger.spooled(job_id),
            await ledger.dead_letter_of(job_id),
            await ledger.inline_outcome(job_id),
        )

    found = await _read(sources, "Postgres records", rows(), problems)
    return found if found is not None else (None, None, None)


async def job_detail(sources: Sources, job_id: str) -> JobDetail:
    """Everything known of one job, from Redis (record, result) and Postgres (spool, dead
    letter, inline outcome), in the order `status` uses."""
    problems: list[str] = []
    producer, masker = sources.producer, sources.masker
    view: JobView | None = await _read(
        sources, "Redis", producer.backend.job(controls.queue_names(sources.settings), job_id), problems
    )
    spooled, dead, inline = await _ledger_rows(sources, job_id, problems)
    facts = _Facts(state=view.state.value if view is not None else "unknown")
    if view is not None:
        facts.from_redis(view)
    if spooled is not None:
        facts.state, facts.mode, facts.name, facts.kwargs = "spooled", "spooled", spooled.name, spooled.kwargs
        facts.traceparent = spooled.traceparent
        facts.timeline.append(("runs at", spooled.run_at))
    if inline is not None and facts.state in ("not_found", "unknown"):
        facts.from_inline(inline)
    if dead is not None and facts.state in ("failed", "not_found", "unknown"):
        facts.from_dead_letter(dead)
    progress = None
    if facts.state == "in_progress":
        status = await _read(sources, "progress", producer.status(job_id), problems)
        progress = controls.progress_of(status) if status is not None else None
    return JobDetail(
        job_id=job_id,
        found=facts.state not in ("not_found", "unknown"),
        state=facts.state,
        name=facts.name,
        queue=view.queue if view is not None and facts.mode == "queued" else None,
        mode=facts.mode,
        tries=facts.tries,
        args_json=masker.json(facts.kwargs) if facts.kwargs is not None else None,
        result_json=masker.json(facts.result) if facts.has_result else None,
        error=masker.value(facts.error) if facts.error is not None else None,
        trace_id=_trace_id(facts.traceparent),
        timeline=facts.timeline,
        progress=progress,
        problem=masker.text(view.problem) if view is not None and view.problem else None,
        problems=_collapse(problems),
    )


@dataclass
class _Facts:
    """A job's facts as they are gathered from each source, later ones overriding."""

    state: str
    mode: str | None = None
    name: str | None = None
    kwargs: Any = None
    tries: int | None = None
    result: Any = None
    has_result: bool = False
    error: dict[str, Any] | None = None
    traceparent: str | None = None
    timeline: list[tuple[str, datetime | None]] = field(default_factory=list)

    def from_redis(self, view: JobView) -> None:
        if view.state is not JobState.NOT_FOUND:
            self.mode = "queued"
        self.tries = view.tries
        record = view.record
        if record is not None:
            self.name, self.kwargs, self.traceparent = record.name, record.kwargs, record.traceparent
            self.timeline.append(("enqueued", _ms(record.enqueue_ms)))
        if view.state is JobState.DEFERRED:
            self.timeline.append(("due", _ms(view.score_ms)))
        result = view.result
        if result is None:
            return
        self.tries = result.job_try
        if result.job_try > 1:
            self.timeline.append((f"{result.job_try - 1} earlier tries ended in a retry", None))
        self.timeline.append((f"started (try {result.job_try})", _ms(result.start_ms)))
        self.timeline.append(("finished", _ms(result.finish_ms)))
        if result.success:
            self.result, self.has_result = result.value, True
        else:
            self.error = result.error

    def from_inline(self, inline: InlineOutcome) -> None:
        self.state = "complete" if inline.success else "failed"
        self.mode, self.name, self.tries = "inline", inline.name, inline.tries
        self.timeline.append(
            (
                f"finished inline after {inline.tries} tr{'y' if inline.tries == 1 else 'ies'}",
                inline.finished_at,
            )
        )
        if inline.success:
            self.result, self.has_result = inline.result, True
        else:
            self.error = inline.error

    def from_dead_letter(self, dead: DeadLetter) -> None:
        self.state, self.name, self.tries, self.error, self.mode = (
            "dead",
            dead.name,
            dead.tries,
            dead.error,
            dead.mode,
        )
        if self.kwargs is None:
            self.kwargs = dead.kwargs
        if not self.timeline and dead.enqueued_at is not None:
            self.timeline.append(("enqueued", dead.enqueued_at))
        self.timeline.append(
            (f"dead-lettered after {dead.tries} tr{'y' if dead.tries == 1 else 'ies'}", dead.failed_at)
        )


# -- schedules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleRow:
    job: str
    cron: str
    tz: str
    next_run: datetime | None
    last_due: datetime | None
    last_job_id: str | None
    last_status: str | None
    last_error: dict[str, Any] | None
    catch_up: str | None


def cron_text(schedule: Schedule) -> str:
    """The schedule in cron's field order, with seconds first: `sec min hour day month weekday`
    (weekday 0 is Monday, as in the registry)."""

    def field_text(value: object) -> str:
        if value is None:
            return "*"
        if isinstance(value, int):
            return str(value)
        return ",".join(str(v) for v in sorted(value))  # type: ignore[call-overload]

    parts = (schedule.second, schedule.minute, schedule.hour, schedule.day, schedule.month, schedule.weekday)
    return " ".join(field_text(p) for p in parts)


def _latest_due(schedule: Schedule, now: datetime) -> datetime | None:
    # Widening windows: a per-second schedule is found in the first, a yearly one in the last,
    # and neither walks more than a few hundred ticks.
    for window in (
        timedelta(minutes=2),
        timedelta(hours=2),
        timedelta(days=2),
        timedelta(days=32),
        timedelta(days=367),
    ):
        found = latest_run(schedule, now, window)
        if found is not None:
            return found
    return None


async def schedules(sources: Sources) -> tuple[list[ScheduleRow], list[str]]:
    problems: list[str] = []
    now = datetime.now(UTC)
    rows = []
    for schedule in sources.registry.schedules:
        try:
            upcoming: datetime | None = next_run(schedule, now)
            last = _latest_due(schedule, now)
        except ValueError as exc:  # a schedule that never runs; the worker refuses it the same way
            problems.append(str(exc))
            upcoming = last = None
        job_id = f"cron:{schedule.job}:{int(last.timestamp())}" if last is not None else None
        status: dict[str, Any] | None = None
        if job_id is not None:
            status = await _read(
                sources, f"schedule {schedule.job}", sources.producer.status(job_id), problems
            )
        error = status.get("error") if status is not None else None
        rows.append(
            ScheduleRow(
                job=schedule.job,
                cron=cron_text(schedule),
                tz=schedule.tz or "UTC",
                next_run=upcoming,
                last_due=last,
                last_job_id=job_id,
                last_status=status["status"] if status is not None else None,
                last_error=sources.masker.value(error) if isinstance(error, dict) else None,
                catch_up=str(schedule.catch_up) if schedule.catch_up is not None else None,
            )
        )
    return rows, problems


# -- workers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    host: str
    pid: int
    queue: str
    version: str | None
    started: datetime | None
    running: int
    last_report: datetime
    stale: bool
    per_min_1: float
    per_min_5: float
    per_min_60: float
    failed_hour: int


async def workers(sources: Sources) -> tuple[list[WorkerRow], int, list[str]]:
    problems: list[str] = []
    raws = await _read(sources, "workers", sources.producer.backend.worker_snapshots(), problems)
    snapshots, malformed = _parse_snapshots(raws or [])
    now = time.time()
    rows = []
    for snapshot in snapshots:
        hour = charts.total_of(charts.hour_of_snapshots([snapshot], now))
        started = snapshot.get("started")
        version = snapshot.get("version")
        at = float(snapshot.get("at", 0)) if isinstance(snapshot.get("at"), int | float) else 0.0
        rows.append(
            WorkerRow(
                worker=snapshot["worker"],
                host=snapshot["host"],
                pid=snapshot["pid"],
                queue=snapshot["queue"],
                version=version if isinstance(version, str) else None,
                started=datetime.fromtimestamp(started, UTC) if isinstance(started, int | float) else None,
                running=snapshot["running"],
                last_report=datetime.fromtimestamp(at, UTC),
                stale=now - at > _STALE_AFTER_S,
                per_min_1=hour.per_minute(1),
                per_min_5=hour.per_minute(5),
                per_min_60=hour.per_minute(60),
                failed_hour=sum(hour.failed),
            )
        )
    rows.sort(key=lambda r: (r.queue, r.host, r.pid))
    return rows, malformed, problems
