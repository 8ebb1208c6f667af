"""Where a draining worker spends its time: py-spy samples of our worker process while it
drains a backlog of no-op jobs, summed per function (share of all samples).

    python -m bench.profile          # prints a markdown section

Needs py-spy (the `bench` extra) and permission to trace a child process; prints why not
otherwise.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import SecretStr

from bench.harness import Counters
from bench.scenarios import LOGS, Env, running
from devservices.redis import RedisServer
from settings import Settings
from worker.telemetry import configure_logging

__all__ = ["main", "summarize_raw"]

JOBS = 60_000
RATE_HZ = 200
# Frames every sample shares (interpreter and event-loop plumbing): not informative.
_PLUMBING = ("runpy", "asyncio/runners.py", "base_events.py", "events.py", "worker_entry.py")
# Every stack of a thread other than the main one starts here.
_OTHER_THREAD = "Thread._bootstrap (threading.py"


def summarize_raw(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy's raw format ("frame;frame;... count") -> samples, inclusive and self counts, of
    the event-loop thread only: the health server's and executors' threads mostly sleep."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(_OTHER_THREAD in frame for frame in frames):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            if not any(p in frame for p in _PLUMBING):
                inclusive[frame] += n
    return total, inclusive, own


def _py_spy() -> str | None:
    """py-spy from this interpreter's environment (make bench does not activate it), else PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def _profile(spy_bin: str, out: Path) -> float:
    with RedisServer() as server:
        async with running("ours", Env(server.url)) as (worker, client, counters):
            assert worker.proc is not None
            due_ms = int((time.time() + 3.0) * 1000)
            await client.fill("noop", JOBS, due_ms)
            await asyncio.sleep(max(0.0, due_ms / 1000 - time.time() - 0.1))  # py-spy attaches in ~0.1 s
            spy = await asyncio.create_subprocess_exec(
                spy_bin, "record", "--idle", "-p", str(worker.proc.pid), "-r", str(RATE_HZ),
                "--format", "raw", "-o", str(out), "-d", "60",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await _drained(client.queue, counters)
            rate = JOBS / (time.time() - due_ms / 1000)
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            _, err = await spy.communicate()
            if spy.returncode not in (0, -2):
                raise RuntimeError(err.decode(errors="replace")[-300:])
    return rate


async def _drained(queue: str, counters: Counters) -> None:
    left = await counters.zcard(queue)
    while left > 0:
        await asyncio.sleep(0.01)
        left = await counters.zcard(queue)


def _share(counts: Counter[str], total: int, needle: str) -> float:
    return sum(n for frame, n in counts.items() if needle in frame) / total


def _section(rate: float, text: str) -> str:
    total, inclusive, own = summarize_raw(text)
    waiting = _share(own, total, "select (selectors.py")
    logging_ = _share(inclusive, total, "BoundLogger.info")
    redis = _share(inclusive, total, "RedisLink.")
    lines = [
        "### Profile: where a draining worker spends its time",
        "",
        f"py-spy at {RATE_HZ} Hz (idle samples included) on our worker process draining {JOBS:,} no-op jobs "
        f"({rate:,.0f} jobs/s in this run, {total:,} samples of the event-loop thread; the health "
        "server's and thread pools' threads, idle, are left out). The event loop waits for I/O in "
        f"{waiting:.0%} of the samples: one worker process is bound by its own CPU, that is by "
        f"per-job Python work. The one log line per job takes {logging_:.0%}, talking to Redis "
        f"(claims, outcome writes, wake-ups) {redis:.0%}. More throughput means more worker "
        "processes, or a cheaper log line.",
        "",
        "Share of all samples, including callees:",
        "",
        "| share | function |",
        "|---|---|",
    ]
    lines += [f"| {n / total:.0%} | `{frame}` |" for frame, n in inclusive.most_common(16)]
    lines += ["", "Most samples in the function itself (self time):", "", "| share | function |", "|---|---|"]
    lines += [f"| {n / total:.0%} | `{frame}` |" for frame, n in own.most_common(8)]
    return "\n".join(lines)


def main() -> int:
    spy_bin = _py_spy()
    if spy_bin is None:
        print("### Profile\n\nSkipped: py-spy is not installed (it comes with the `bench` extra).")
        return 0
    quiet = Settings(_env_file=None, redis_url=SecretStr(""), log_format="json")  # type: ignore[call-arg]
    configure_logging(quiet, stream=io.StringIO())
    LOGS.mkdir(parents=True, exist_ok=True)
    out = LOGS / "profile.raw"
    out.unlink(missing_ok=True)
    try:
        rate = asyncio.run(_profile(spy_bin, out))
        text = out.read_text()
    except (RuntimeError, OSError) as exc:
        print(f"### Profile\n\nSkipped: py-spy could not sample the worker ({exc}).")
        return 0
    print(_section(rate, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
