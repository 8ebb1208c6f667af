"""Startup and memory of the processes ops start: `python -m worker --help`, `python -m worker
enqueue` against a test-owned Redis, and `python -m worker run` until its /readyz answers; the
worker's RSS idle and after 100,000 no-op jobs (issue 18). Each figure is the median of
several fresh processes. Prints a markdown section; writes bench/results/startup.json.

    python -m bench.bench_startup   # BENCH_QUICK=1: fewer runs, 10,000 jobs

Bytecode is cached as in a deployment: the processes run without PYTHONDONTWRITEBYTECODE, after
one warm-up each, so a figure is startup, not compiling our source. With BENCH_BASELINE=<path>
(a checkout of an earlier commit) the same figures are taken of that checkout, interleaved.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.harness import Counters, client_for
from bench.stats import summarize, table
from devservices._process import pick_port
from devservices.redis import RedisServer
from settings import Settings
from worker.telemetry import configure_logging

__all__ = ["main"]

HERE = Path(__file__).parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "startup.json"
LOGS = HERE / "results" / "startup-logs"
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = 3 if QUICK else 7
JOBS = 10_000 if QUICK else 100_000
MEMORY_RUNS = 1 if QUICK else 3
BASELINE = os.environ.get("BENCH_BASELINE") or None
TARGETS = {"help_s": 0.150, "enqueue_s": 0.150, "idle_rss_mib": 40.0}
# The libraries every command that talks to Redis needs, imported by a bare interpreter with none
# of our code: the floor under the `enqueue` time and the worker's RSS (see `_floor`). Measured
# as redis-py imports them, and with PyJWT deferred as the command line does (worker.ops.deferred).
FLOOR_IMPORTS = "asyncio, pydantic, pydantic_settings, redis.asyncio, structlog, orjson"
_DEFER = "from worker.ops import deferred\ndeferred.defer()\n"
_FLOOR_SCRIPT = (
    f"import {FLOOR_IMPORTS}\n"
    "import re\n"
    "print(int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)"
)


def _env(url: str, root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "JOB_MODULES")}
    env.update({"REDIS_URL": url, "LOG_FORMAT": "json", "WORKER_HTTP_PORT": "0", **extra})
    if root != ROOT:
        env["PYTHONPATH"] = str(root)
    return env


def _timed(root: Path, env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "worker", *args], cwd=root, env=env, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`worker {' '.join(args)}` failed: {done.stderr.decode()[-2000:]}")
    return elapsed


def _floor(deferred: bool) -> tuple[float, float]:
    """(seconds, RSS MiB) of a fresh interpreter that imports FLOOR_IMPORTS and exits."""
    script = (_DEFER if deferred else "") + _FLOOR_SCRIPT
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started, float(done.stdout)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Worker:
    """`python -m worker run` on a queue of its own, with the health endpoint on a free port."""

    def __init__(self, root: Path, url: str, *args: str) -> None:
        self.port = pick_port()
        self.queue = f"bench:{uuid.uuid4().hex[:8]}"
        env = _env(url, root, QUEUE_NAME=self.queue, WORKER_HTTP_PORT=str(self.port), WORKER_QUEUES="default")
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / f"worker-{self.queue.replace(':', '_')}.log").open("wb") as log:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", *args], cwd=root, env=env, stdout=log, stderr=log
            )

    def wait_ready(self) -> float:
        """Seconds from the spawn to the first 200 from /readyz."""
        while not _ready(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}); see {LOGS}")
            if time.perf_counter() - self.started > 60:
                raise RuntimeError("the worker was not ready within 60 s")
            time.sleep(0.005)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _interleaved(roots: dict[str, Path], runs: int, measure: Callable[[Path], Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {kind: [] for kind in roots}
    for _ in range(runs):
        for kind, root in roots.items():
            out[kind].append(measure(root))
    return out


def _worker_start(url: str) -> Callable[[Path], tuple[float, float]]:
    def measure(root: Path) -> tuple[float, float]:
        worker = Worker(root, url)
        try:
            ready = worker.wait_ready()
            time.sleep(2.0)  # idle: its first block on Redis, the health thread settled
            return ready, _rss_mib(worker.proc.pid)
        finally:
            worker.stop()

    return measure


async def _until_empty(counters: Counters, queue: str) -> None:
    while True:
        if not await counters.zcard(queue):
            return
        await asyncio.sleep(0.05)


async def _after_jobs(url: str, total: int) -> tuple[float, float]:
    """(RSS idle, RSS after `total` no-op jobs) of a CLI worker running bench.jobs via --jobs."""
    worker = Worker(ROOT, url, "--jobs", "bench.jobs")
    try:
        worker.wait_ready()
        await asyncio.sleep(2.0)
        idle = _rss_mib(worker.proc.pid)
        client = await client_for("ours", url, worker.queue)
        try:
            counters = Counters(client.redis)
            for start in range(0, total, 10_000):
                await client.fill("noop", min(10_000, total - start), int(time.time() * 1000))
                await _until_empty(counters, client.queue)
            await asyncio.sleep(0.5)  # the last results written
            return idle, _rss_mib(worker.proc.pid)
        finally:
            await client.close()
    finally:
        worker.stop()


def _collect() -> dict[str, Any]:
    roots = {"ours": ROOT, **({"before": Path(BASELINE)} if BASELINE else {})}
    with RedisServer() as server:
        url = server.url
        enqueue = ("enqueue", "ping", "--args", '{"message": "bench"}')
        queue_env = {"QUEUE_NAME": f"bench:{uuid.uuid4().hex[:8]}"}
        for root in roots.values():  # warm-up: bytecode written, files in the page cache
            _timed(root, _env(url, root), "--help")
            _timed(root, _env(url, root, **queue_env), *enqueue)
        _floor(True)  # warm-up, as for the commands
        floors = {kind: [_floor(kind == "deferred") for _ in range(RUNS)] for kind in ("plain", "deferred")}
        r: dict[str, Any] = {
            "floor_s": {kind: [seconds for seconds, _ in runs] for kind, runs in floors.items()},
            "floor_rss_mib": {kind: [rss for _, rss in runs] for kind, runs in floors.items()},
            "help_s": _interleaved(roots, RUNS, lambda root: _timed(root, _env(url, root), "--help")),
            "enqueue_s": _interleaved(
                roots, RUNS, lambda root: _timed(root, _env(url, root, **queue_env), *enqueue)
            ),
        }
        started = _interleaved(roots, RUNS, _worker_start(url))
        r["ready_s"] = {kind: [ready for ready, _ in runs] for kind, runs in started.items()}
        r["idle_rss_mib"] = {kind: [rss for _, rss in runs] for kind, runs in started.items()}
        memory = [asyncio.run(_after_jobs(url, JOBS)) for _ in range(MEMORY_RUNS)]
        r["jobs_idle_rss_mib"] = [idle for idle, _ in memory]
        r["jobs_rss_mib"] = [after for _, after in memory]
    return r


def _cell(samples: list[float], unit: str, scale: float = 1.0, digits: int = 0) -> str:
    s = summarize([x * scale for x in samples])
    return f"{s.median:.{digits}f} {unit} ({s.min:.{digits}f}–{s.max:.{digits}f})"


def _met(samples: list[float], target: float) -> str:
    return "met" if statistics.median(samples) <= target else "not met"


def _render(r: dict[str, Any]) -> str:
    kinds = list(r["help_s"])
    rows = []
    for key, label, unit, scale, digits in (
        ("help_s", "`python -m worker --help`", "ms", 1000.0, 0),
        ("enqueue_s", "`python -m worker enqueue ping` (queued)", "ms", 1000.0, 0),
        ("ready_s", "`python -m worker run` until /readyz answers", "ms", 1000.0, 0),
        ("idle_rss_mib", "worker RSS, idle", "MiB", 1.0, 1),
    ):
        target = TARGETS.get(key)
        cells = [_cell(r[key][kind], unit, scale, digits) for kind in kinds]
        goal = f"≤ {target * scale:.0f} {unit}" if target is not None else "—"
        rows.append([label, *cells, goal, _met(r[key]["ours"], target) if target is not None else "—"])
    head = ["figure (median of fresh processes, min–max)", *kinds, "target", "ours"]
    after = summarize(r["jobs_rss_mib"])
    idle = summarize(r["jobs_idle_rss_mib"])
    floor_ms = {k: summarize([x * 1000 for x in v]).median for k, v in r["floor_s"].items()}
    floor_rss = {k: summarize(v).median for k, v in r["floor_rss_mib"].items()}
    return "\n".join(
        [
            "## Startup and worker memory",
            "",
            f"{RUNS} fresh processes per figure, interleaved"
            + (" with the baseline checkout" if BASELINE else "")
            + "; bytecode cached (one warm-up each); a test-owned Redis; the platform's registry."
            + " Ready: from the spawn to the first 200 from the health endpoint's /readyz. Idle RSS:"
            + " 2 s after ready.",
            "",
            table(head, rows),
            "",
            f"**The floor under those targets.** A bare interpreter that only imports the libraries "
            f"every command that talks to Redis needs (`import {FLOOR_IMPORTS}`, none of our code) "
            f"takes {floor_ms['deferred']:.0f} ms from spawn to exit and ends at "
            f"{floor_rss['deferred']:.1f} MiB RSS, with PyJWT deferred as the command line does; "
            f"{floor_ms['plain']:.0f} ms and {floor_rss['plain']:.1f} MiB as redis-py 5.3 imports them "
            f"(PyJWT and cryptography, for a token authentication we do not use). Median of "
            f"{RUNS} each. Above the deferred floor, `enqueue` spends "
            f"{summarize(r['enqueue_s']['ours']).median * 1000 - floor_ms['deferred']:.0f} ms and the "
            f"idle worker holds {summarize(r['idle_rss_mib']['ours']).median - floor_rss['deferred']:.1f} "
            "MiB: the job registry's argument models, our modules, asyncpg and the metrics client.",
            "",
            f"Worker RSS over {JOBS:,} no-op jobs (`python -m worker run --jobs bench.jobs`, "
            f"{len(r['jobs_rss_mib'])} run(s), median): {idle.median:.1f} MiB idle, {after.median:.1f} MiB "
            f"after the jobs ({after.median - idle.median:+.1f} MiB).",
        ]
    )


def main() -> None:
    quiet = Settings(_env_file=None, redis_url=SecretStr(""), log_format="json")  # type: ignore[call-arg]
    configure_logging(quiet, stream=io.StringIO())
    r = _collect()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": QUICK, "runs": RUNS, "jobs": JOBS, **r}, indent=2))
    print(_render(r))


if __name__ == "__main__":
    main()
