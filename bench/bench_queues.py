"""Named queues and flow control: head-of-line blocking and shared rate limits.

    python -m bench.bench_queues    # prints a markdown section, writes bench/results/queues.json

Head-of-line: 10,000 AI-like jobs (200 ms each, at most 4 at a time) wait; `critical` jobs are
then enqueued one at a time, 50 ms apart, and their pickup latency (enqueue to start) measured.
Two set-ups, interleaved in one run: named queues (the AI jobs on `ai`, capped at 4 per worker;
the urgent ones on `critical`), and the single queue the runner had before (every job on one
queue, the AI jobs held to 4 by a semaphore inside the job, as the AI client did). A pickup
not seen within 10 s is counted as 10 s and the figure shown as "> 10,000".

Rate limit: 3 worker processes share `bench_rate=600/min` for 2 minutes of a backlog of 1,400
jobs; starts per minute, from the jobs' own start times.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.queues_entry import QUEUE_BENCH_REGISTRY
from bench.stats import table
from devservices.redis import RedisServer
from settings import Settings
from worker.producer import JobHandle, Producer
from worker.telemetry import configure_logging

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "queues.json"
LOGS = Path(__file__).parent / "results" / "logs"
QUICK = bool(os.environ.get("BENCH_QUICK"))
AI_BACKLOG = 10_000
SAMPLES = 100
GAP_S = 0.05
CENSOR_S = 10.0
RUNS = 1 if QUICK else 3
RATE_PER_MIN = 600
RATE_WINDOW_S = 60.0 if QUICK else 120.0
RATE_BACKLOG = 1_400
TARGET_P99_MS = 50.0


def _settings(url: str, queue: str, **values: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=SecretStr(url),
        queue_name=queue,
        log_format="json",
        log_level="WARNING",
        **values,
    )


class _Workers:
    """Worker processes of `bench.queues_entry` with the given settings, stopped on exit."""

    def __init__(self, url: str, queue: str, count: int, **env: str) -> None:
        self.env = {
            **os.environ,
            "REDIS_URL": url,
            "QUEUE_NAME": queue,
            "LOG_LEVEL": "WARNING",
            "WORKER_HTTP_PORT": "0",
            "WORKER_SHUTDOWN_GRACE": "1",
            **env,
        }
        self.count = count
        self.procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> _Workers:
        LOGS.mkdir(parents=True, exist_ok=True)
        for n in range(self.count):
            log = (LOGS / f"queues-{self.env['QUEUE_NAME'].replace(':', '_')}-{n}.log").open("wb")
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.queues_entry", cwd=ROOT, env=self.env, stdout=log, stderr=log
                )
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def head_of_line(url: str, mode: str) -> dict[str, Any]:
    """Pickup latency (ms) of urgent jobs behind an AI backlog, with named queues or one queue."""
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    named = mode == "named"
    env = {"WORKER_QUEUE_CONCURRENCY": "ai=4"} if named else {"WORKER_QUEUES": "default"}
    settings = _settings(url, queue)
    async with _Workers(url, queue, 1, **env), Producer(settings, registry=QUEUE_BENCH_REGISTRY) as producer:
        warm = await producer.enqueue_job("urgent", queue=None if named else "default")
        await warm.result(timeout=60)
        backlog = "ai_like" if named else "ai_like_gated"
        await producer.enqueue_many(backlog, [{}] * AI_BACKLOG)
        await asyncio.sleep(1.0)  # the worker is busy with the backlog
        sent: list[tuple[float, JobHandle[Any]]] = []
        for _ in range(SAMPLES):
            t0 = time.time()
            sent.append((t0, await producer.enqueue_job("urgent", queue=None if named else "default")))
            await asyncio.sleep(GAP_S)
        deadline = time.time() + CENSOR_S
        latencies, censored = [], 0
        for t0, handle in sent:
            try:
                started = await handle.result(timeout=max(deadline - time.time(), 0.01))
                latencies.append((started - t0) * 1000)
            except TimeoutError:
                latencies.append(CENSOR_S * 1000)
                censored += 1
    return {
        "mode": mode,
        "p50_ms": statistics.median(latencies),
        "p99_ms": _pct(latencies, 0.99),
        "censored": censored,
    }


async def rate_limit(url: str) -> dict[str, Any]:
    """Starts per minute of jobs under one limit shared by three worker processes."""
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    limit = f"bench_rate={RATE_PER_MIN}/min"
    settings = _settings(url, queue, rate_limits=limit)
    async with Producer(settings, registry=QUEUE_BENCH_REGISTRY) as producer:
        handles = await producer.enqueue_many("limited", [{}] * RATE_BACKLOG)
        async with _Workers(url, queue, 3, RATE_LIMITS=limit, WORKER_MAX_JOBS="100"):
            await asyncio.sleep(RATE_WINDOW_S + 8.0)  # start-up, then the window
        starts = []
        for handle in handles:  # those past the window have not run: no result yet
            record = await producer.backend.result(handle.job_id)
            if record is not None and record.success:
                starts.append(float(record.value))
    starts.sort()
    first = starts[0]
    minutes = [
        sum(1 for s in starts if first + 60 * m <= s < first + 60 * (m + 1))
        for m in range(int(RATE_WINDOW_S // 60))
    ]
    sliding = max(
        sum(1 for t in starts[i : i + RATE_PER_MIN + 5] if t < s + 60.0) for i, s in enumerate(starts)
    )
    return {
        "limit_per_min": RATE_PER_MIN,
        "per_minute": minutes,
        "max_in_any_60s": sliding,
        "started": len(starts),
    }


async def measure() -> dict[str, Any]:
    configure_logging(_settings("redis://localhost:1/0", "x"))
    with RedisServer() as server:
        hol: dict[str, list[dict[str, Any]]] = {"named": [], "single": []}
        for _ in range(RUNS):
            for mode in ("named", "single"):
                hol[mode].append(await head_of_line(server.url, mode))
        rate = await rate_limit(server.url)
    return {"head_of_line": hol, "rate_limit": rate, "quick": QUICK, "loadavg": os.getloadavg()[0]}


def _ms(value: float, censored: bool) -> str:
    return f"> {value:,.0f}" if censored else f"{value:,.1f}"


def render(data: dict[str, Any]) -> str:
    lines = ["## Named queues and flow control (bench.bench_queues)", ""]
    rows = []
    medians: dict[str, dict[str, float]] = {}
    for mode, runs in data["head_of_line"].items():
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        medians[mode] = {"p50": p50, "p99": p99}
        censored = any(r["censored"] for r in runs)
        label = (
            "named queues (ai capped at 4, urgent on critical)" if mode == "named" else "one queue (before)"
        )
        rows.append(
            [
                label,
                _ms(p50, censored and p50 >= CENSOR_S * 1000),
                _ms(p99, censored),
                str(sum(r["censored"] for r in runs)),
            ]
        )
    lines.append(
        f"Head-of-line: {AI_BACKLOG:,} AI-like jobs (200 ms, 4 at a time) queued, then {SAMPLES} urgent jobs "
        f"one at a time, {GAP_S * 1000:.0f} ms apart; pickup latency (enqueue to start), median of {RUNS} "
        f"interleaved runs. A pickup not seen within {CENSOR_S:.0f} s counts as {CENSOR_S:.0f} s."
    )
    lines.append("")
    lines.append(table(["set-up", "p50 ms", "p99 ms", "urgent jobs not started in 10 s"], rows))
    met = medians["named"]["p99"] <= TARGET_P99_MS
    lines += [
        "",
        f"Target p99 ≤ {TARGET_P99_MS:.0f} ms with named queues: **{'met' if met else 'not met'}** "
        f"({medians['named']['p99']:.1f} ms). With one queue an urgent job waits behind the whole backlog "
        f"(about {AI_BACKLOG / 4 * 0.2 / 60:.0f} minutes at 4 at a time).",
        "",
    ]
    rate = data["rate_limit"]
    per_min = rate["per_minute"]
    worst = min(per_min) if per_min else 0
    within = all(abs(m - rate["limit_per_min"]) <= 0.02 * rate["limit_per_min"] for m in per_min)
    never_above = all(m <= rate["limit_per_min"] for m in per_min)
    lines.append(
        f"Rate limit: 3 worker processes share `bench_rate={rate['limit_per_min']}/min` over a backlog of "
        f"{RATE_BACKLOG:,} jobs; starts counted per minute from the first start (the jobs' own clocks)."
    )
    lines.append("")
    lines.append(
        table(
            ["minute", "starts", "vs limit"],
            [
                [str(i + 1), str(m), f"{(m / rate['limit_per_min'] - 1) * 100:+.1f}%"]
                for i, m in enumerate(per_min)
            ],
        )
    )
    lines += [
        "",
        f"Most starts in any 60 s window: {rate['max_in_any_60s']}. Target within 2% of the limit and never "
        f"above it: **{'met' if within and never_above else 'not met'}** (lowest minute {worst}).",
    ]
    return "\n".join(lines)


def main() -> None:
    data = asyncio.run(measure())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    print(render(data))


if __name__ == "__main__":
    main()
