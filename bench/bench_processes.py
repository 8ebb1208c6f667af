"""Scale-out: how the drain rate grows with `python -m worker run --processes N`, for 1, 2 and N =
cores processes, on a no-op backlog and a 10 ms backlog, with the CPU the worker processes and
redis-server used during each drain, so a reader sees whether cores or Redis bound the ratio.

Each run starts the real command line on a fresh queue of a test-owned Redis, waits until every
worker process has reported (its snapshot is in Redis, so it is claiming), fills the backlog with
every job due at one instant, and times from that instant until the queue is empty (a running job
stays in the queue until its outcome is written, so "empty" means every job has finished). CPU
is utime + stime from /proc over that same window, summed over the worker processes (not the
idle supervisor). Runs of every process count are interleaved; the figures are medians.

The jobs are the registry's `ping` (no arguments: a small dict returned; `sleep=0.01`: 10 ms of
`asyncio.sleep` first), so the stock `python -m worker run` runs them as it is. Per-job INFO log
lines are on, as in production; the logs go to files under /tmp/mb-bench-logs.

    python -m bench.bench_processes   # BENCH_QUICK=1: a small backlog, one run
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import SecretStr

from bench.stats import summarize, table
from devservices.redis import RedisServer
from settings import Settings
from worker.producer import Producer
from worker.telemetry import configure_logging

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "processes.json"
LOGS = Path("/tmp/mb-bench-logs")
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = 1 if QUICK else 3
CORES = os.cpu_count() or 1
COUNTS = sorted({1, 2, CORES})
JOBS = {"noop": 4_000 if QUICK else 40_000, "10ms": 4_000 if QUICK else 40_000}
ARGS: dict[str, dict[str, Any]] = {"noop": {}, "10ms": {"sleep": 0.01}}
TARGETS = {"noop": 1.6, "10ms": 1.8}  # 2 processes against 1, on this 2-core machine (issue 18)
FILL_LEAD_S = 3.0  # the backlog is written this long before it comes due
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    job: str
    processes: int
    jobs: int
    seconds: float
    rate: float
    workers_cpu: float  # cores: CPU seconds of the worker processes per second of drain
    redis_cpu: float  # cores, redis-server
    machine_cpu: float  # cores busy on the whole machine: others' work shows as the difference


def _cpu_s(pid: int) -> float:
    """utime + stime of `pid` so far, in seconds (0 once it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, not idle or waiting on I/O)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


async def _workers_up(producer: Producer, supervisor: int, count: int, timeout: float = 60) -> list[int]:
    """The pids of the group's worker processes, once all `count` have reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = []
        for raw in await producer.backend.worker_snapshots():
            snapshot = orjson.loads(raw)
            if snapshot.get("supervisor") == supervisor:
                pids.append(int(snapshot["pid"]))
        if len(pids) == count:
            return pids
        await asyncio.sleep(0.05)
    raise RuntimeError(f"--processes {count}: not every worker process reported within {timeout} s")


async def _one(url: str, redis_pid: int, job: str, count: int) -> Run:
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=SecretStr(url), queue_name=queue, log_format="json"
    )
    env = {**os.environ, "REDIS_URL": url, "QUEUE_NAME": queue, "WORKER_HTTP_PORT": "0", "LOG_FORMAT": "json"}
    total = JOBS[job]
    with (LOGS / f"processes-{count}-{job}-{queue.replace(':', '_')}.log").open("wb") as log:
        command = [sys.executable, "-m", "worker", "run", "--processes", str(count)]
        proc = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env, stdout=log, stderr=log)
    raw = aioredis.Redis.from_url(url)
    try:
        async with Producer(settings) as producer:
            # With one process the command line runs the worker itself: no supervisor field.
            pids = [proc.pid] if count == 1 else await _workers_up(producer, proc.pid, count)
            if count == 1:
                await (await producer.enqueue_job("ping")).result(timeout=60)
            due = time.time() + FILL_LEAD_S
            await producer.enqueue_many("ping", [ARGS[job]] * total, defer_by=FILL_LEAD_S)
            if time.time() > due:
                raise RuntimeError(f"filling {total:,} jobs took longer than {FILL_LEAD_S} s")
            await asyncio.sleep(due - time.time())
            cpu0 = sum(map(_cpu_s, pids)), _cpu_s(redis_pid), _machine_busy_s()
            while True:  # polled: Redis has no event for "this sorted set is now empty"
                if not await raw.zcard(queue):
                    break
                await asyncio.sleep(0.002)
            elapsed = time.time() - due
            cpu1 = sum(map(_cpu_s, pids)), _cpu_s(redis_pid), _machine_busy_s()
    finally:
        await raw.aclose()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    return Run(
        job,
        count,
        total,
        elapsed,
        total / elapsed,
        (cpu1[0] - cpu0[0]) / elapsed,
        (cpu1[1] - cpu0[1]) / elapsed,
        (cpu1[2] - cpu0[2]) / elapsed,
    )


async def _measure(server: RedisServer) -> list[Run]:
    if server.pid is None:
        raise RuntimeError("the benchmark's redis-server is not running")
    runs = []
    for _ in range(RUNS):  # every count once per round, so drift hits all alike
        for job in JOBS:
            for count in COUNTS:
                runs.append(await _one(server.url, server.pid, job, count))
    return runs


def _markdown(runs: list[Run]) -> str:
    rows, verdicts = [], []
    for job in JOBS:
        rate = {n: summarize([r.rate for r in runs if r.job == job and r.processes == n]) for n in COUNTS}
        for n in COUNTS:
            mine = [r for r in runs if r.job == job and r.processes == n]
            workers = summarize([r.workers_cpu for r in mine]).median
            redis_cpu = summarize([r.redis_cpu for r in mine]).median
            machine = summarize([r.machine_cpu for r in mine]).median
            rows.append(
                [
                    job,
                    str(n),
                    f"{rate[n].median:,.0f} (min {rate[n].min:,.0f}, max {rate[n].max:,.0f}, n={rate[n].n})",
                    f"{rate[n].median / rate[1].median:.2f}×",
                    f"{workers:.2f} ({workers / n:.2f} per process)",
                    f"{redis_cpu:.2f}",
                    f"{machine:.2f} of {CORES}",
                ]
            )
        if 2 in rate:
            ratio, target = rate[2].median / rate[1].median, TARGETS[job]
            met = "met" if ratio >= target else "not met"
            verdicts.append(f"- {job}: 2 processes drain at {ratio:.2f}× one; target ≥ {target}× — **{met}**")
    backlog = ", ".join(f"{JOBS[j]:,} {j} jobs" for j in JOBS)
    return "\n".join(
        [
            "## Scale-out: `python -m worker run --processes N`",
            "",
            f"Backlogs of {backlog}, all due at one instant, drained by `python -m worker run "
            f"--processes N` (the real command line; per-job INFO lines on) on this {CORES}-core "
            "machine; jobs/s from the due instant until every job has finished; medians of "
            f"{RUNS} runs, the counts interleaved. CPU in cores (CPU seconds per second of drain): "
            "the worker processes' summed utime + stime, redis-server's, and the whole machine's "
            "busy time (/proc/stat). When the workers' share is near the machine's cores, cores "
            "bound the ratio; when Redis's share nears 1.0, its one thread does; when the machine is "
            "busy well beyond workers + Redis (+ about 0.1 for this benchmark's polling), other "
            "processes took the cores and the run is not a clean measurement.",
            "",
            table(
                ["jobs", "processes", "jobs/s", "× one process", "workers CPU", "Redis CPU", "machine busy"],
                rows,
            ),
            "",
            f"Targets on this {CORES}-core machine:",
            "",
            *verdicts,
        ]
    )


def main() -> None:
    quiet = Settings(_env_file=None, redis_url=SecretStr(""), log_format="json")  # type: ignore[call-arg]
    configure_logging(quiet, stream=io.StringIO())
    LOGS.mkdir(parents=True, exist_ok=True)
    with RedisServer() as server:
        runs = asyncio.run(_measure(server))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"cores": CORES, "counts": COUNTS, "jobs": JOBS, "runs": [asdict(r) for r in runs]}, indent=1
        )
    )
    print(_markdown(runs))


if __name__ == "__main__":
    main()
