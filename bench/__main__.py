"""`make bench`: run every benchmark module and write bench/REPORT.md.

Each module runs in its own process (a clean heap and event loop), prints one markdown section
and writes its raw figures to bench/results/<name>.json.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
MODULES = [
    "bench_fallback",
    "bench_worker",
    "bench_processes",
    "bench_tracing",
    "bench_bullmq",
    "bench_queues",
    "bench_email",
    "bench_analytics",
    "bench_http",
    "bench_dashboard",
    "bench_startup",
]
PACKAGES = ["arq", "redis", "hiredis", "asyncpg", "orjson", "pydantic", "structlog", "aiosmtplib", "sendgrid"]
PACKAGES += ["starlette", "uvicorn", "httptools", "uvloop"]  # the HTTP API (bench_http)


def _machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except OSError:
        mem = "unknown"
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    redis_server = subprocess.run(
        [sys.executable, "-c", "from devservices.binaries import find_redis_server as f; print(f())"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    redis_version = subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout.strip()
    return "\n".join(
        [
            f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {os.cpu_count()} cores ({cpu}), {mem} memory, {platform.platform()}",
            f"- Python {platform.python_version()}; {', '.join(versions)}",
            f"- Redis: {redis_version} (test-owned, loopback)",
        ]
    )


def main() -> int:
    sections = []
    failed = []
    for name in MODULES:
        if not (HERE / f"{name}.py").exists():
            continue
        print(f"running bench.{name} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            sys.stderr.write(proc.stderr[-4000:])
            sections.append(f"## bench.{name}\n\nFailed (exit {proc.returncode}); see the console output.")
            continue
        sections.append(proc.stdout.strip())
    report = "# Benchmark report\n\n" + _machine() + "\n\n" + "\n\n".join(sections) + "\n"
    (HERE / "REPORT.md").write_text(report)
    print(f"wrote {HERE / 'REPORT.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
