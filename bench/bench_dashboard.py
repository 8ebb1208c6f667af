"""The ops dashboard at scale: how long its pages take with 1,000,000 jobs queued and 100,000
dead letters (targets: overview ≤ 100 ms, a jobs page ≤ 200 ms).

    python -m bench.bench_dashboard   # prints a markdown section, writes bench/results/dashboard.json

One service process (`python -m worker serve`, its defaults) on a throwaway Redis holding a
million queued `ping` jobs (and 10,000 deferred), a scratch database holding 100,000 dead
letters spread over 30 days, and four worker snapshots with a full hour of per-minute counts
for every job (what four busy workers publish). No worker runs, so the queue stays full. Each
page is fetched by a logged-in client one request at a time over loopback, and timed from the
request to the last byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis
from pydantic import SecretStr

from bench.database import scratch_database
from bench.stats import table
from core.flow import STANDARD_QUEUES
from devservices._process import pick_port
from devservices.redis import RedisServer
from jobs import REGISTRY
from settings import Settings
from worker.ops.http.dashboard.queries import redis_commands_per_overview
from worker.producer import Producer
from worker.telemetry import configure_logging

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "dashboard.json"
LOGS = Path(__file__).parent / "results" / "logs"
TOKEN = "bench-dashboard-" + uuid.uuid4().hex
QUEUE = "bench:dashboard"
QUEUED = 1_000_000
DEFERRED = 10_000
DEAD = 100_000
# A job name with few dead letters: filtering by it reads past most of the table.
RARE = "rare_job"
REQUESTS = 30
WARMUP = 3
TARGET_OVERVIEW_MS = 100.0
TARGET_JOBS_MS = 200.0


async def _fill_queue(settings: Settings) -> list[str]:
    async with Producer(settings) as producer:
        ids: list[str] = []
        chunk = 10_000
        for _ in range(QUEUED // chunk):
            handles = await producer.enqueue_many("ping", [{}] * chunk)
            if any(h.mode != "queued" for h in handles):
                raise RuntimeError("the fill fell back from Redis; the figures would be for a smaller queue")
            ids.append(handles[0].job_id)
        await producer.enqueue_many("ping", [{"message": "later"}] * DEFERRED, defer_by=86_400)
        names = sorted({d.name for d in REGISTRY})
        now_minute = int(time.time() // 60)
        for n in range(4):
            minutes = {
                str(now_minute - m): {
                    name: {"complete": 40 + m, "failed": m % 3, "retry": 1} for name in names
                }
                for m in range(60)
            }
            snapshot = {
                "worker": f"bench-worker-{n}", "host": "bench", "pid": 1000 + n, "queue": QUEUE,
                "at": time.time(), "started": time.time() - 3600, "version": "bench", "running": 100,
                "minutes": minutes, "running_ids": [f"running-{n}-{i}" for i in range(100)],
            }  # fmt: skip
            await producer.backend.publish_snapshot(f"bench-worker-{n}", orjson.dumps(snapshot), 600_000)
    return ids


async def _fill_dead_letters(dsn: str) -> str:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "jobrunner"})
    try:
        now = datetime.now(UTC)
        names = ["send_email", "send_bulk_email", "rollup_analytics", "generate_ai_content", "ping"]
        rng = random.Random(7)
        rows = []
        for i in range(DEAD):
            name = RARE if i % 1000 == 0 else names[i % len(names)]
            error = {
                "type": "PermanentError",
                "message": f"provider said 400 for item {i}",
                "kind": "permanent",
            }
            failed = now - timedelta(seconds=rng.uniform(0, 30 * 86_400))
            payload = json.dumps(
                {"message": {"to": [{"email": f"user{i}@example.com"}], "template": "welcome"}}
            )
            rows.append((f"dead-{i:06d}", name, payload, json.dumps(error), 5, "queued", failed, failed))
        await conn.copy_records_to_table(
            "dead_letters",
            records=rows,
            columns=["job_id", "job_name", "payload", "error", "tries", "mode", "enqueued_at", "failed_at"],
        )
        await conn.execute("ANALYZE dead_letters")
    finally:
        await conn.close()
    return "dead-050000"


async def _ready(client: httpx.AsyncClient, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}; see {LOGS / 'dashboard-serve.log'}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("serve did not become ready")


async def _time(client: httpx.AsyncClient, path: str) -> list[float]:
    samples = []
    for n in range(WARMUP + REQUESTS):
        started = time.perf_counter()
        response = await client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200 or 'class="problems"' in response.text:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:500]}")
        if n >= WARMUP:
            samples.append(elapsed)
    return samples


async def measure() -> dict[str, Any]:
    LOGS.mkdir(parents=True, exist_ok=True)
    quiet = Settings(_env_file=None, log_level="WARNING", log_format="json")  # type: ignore[call-arg]
    configure_logging(quiet, stream=sys.stderr)  # stdout is the report
    async with scratch_database() as dsn:
        with RedisServer() as redis_server:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                redis_url=SecretStr(redis_server.url),
                database_url=SecretStr(dsn),
                queue_name=QUEUE,
                # The fill sends 10,000 jobs a call; give Redis time to answer a big pipeline.
                redis_socket_timeout=10.0,
            )
            fill_started = time.perf_counter()
            queued_ids, dead_id = await asyncio.gather(_fill_queue(settings), _fill_dead_letters(dsn))
            fill_s = time.perf_counter() - fill_started
            port = pick_port()
            env = {
                **os.environ,
                "REDIS_URL": redis_server.url,
                "DATABASE_URL": dsn,
                "QUEUE_NAME": QUEUE,
                "API_PORT": str(port),
                "API_TOKENS": TOKEN,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "WARNING",
            }
            with (LOGS / "dashboard-serve.log").open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "worker", "serve", cwd=ROOT, env=env, stdout=log, stderr=log
                )
            info = aioredis.Redis.from_url(redis_server.url)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    await _ready(client, proc)
                    login = await client.post("/ui/login", data={"token": TOKEN})
                    if login.status_code != 303:
                        raise RuntimeError(f"login answered {login.status_code}")
                    depth = await info.zcard(QUEUE)
                    if depth != QUEUED + DEFERRED:
                        raise RuntimeError(f"the queue holds {depth:,} jobs, not {QUEUED + DEFERRED:,}")
                    pages = {
                        "overview": ("/ui/", TARGET_OVERVIEW_MS),
                        "jobs: queued, first page": ("/ui/jobs?state=queued", TARGET_JOBS_MS),
                        "jobs: queued, page 2,000 (offset 99,950, the deepest shown)": (
                            "/ui/jobs?state=queued&page=2000",
                            TARGET_JOBS_MS,
                        ),
                        "jobs: queued, page 20,000 (refused with a note)": (
                            "/ui/jobs?state=queued&page=20000",
                            TARGET_JOBS_MS,
                        ),
                        "jobs: deferred, first page": ("/ui/jobs?state=deferred", TARGET_JOBS_MS),
                        "jobs: in progress (400 ids from snapshots)": (
                            "/ui/jobs?state=in_progress",
                            TARGET_JOBS_MS,
                        ),
                        "jobs: queued, by a name none has (reads 5,000)": (
                            "/ui/jobs?state=queued&name=send_email",
                            TARGET_JOBS_MS,
                        ),
                        "dead letters, first page": ("/ui/dead", TARGET_JOBS_MS),
                        "dead letters, page 2,000": ("/ui/dead?page=2000", TARGET_JOBS_MS),
                        "dead letters of a rare job (100 of 100,000)": (
                            f"/ui/dead?name={RARE}",
                            TARGET_JOBS_MS,
                        ),
                        "a queued job": (f"/ui/jobs/{queued_ids[-1]}", TARGET_JOBS_MS),
                        "a dead job": (f"/ui/jobs/{dead_id}", TARGET_JOBS_MS),
                        "workers": ("/ui/workers", TARGET_JOBS_MS),
                        "schedules": ("/ui/schedules", TARGET_JOBS_MS),
                    }
                    results: dict[str, Any] = {}
                    for label, (path, target) in pages.items():
                        samples = await _time(client, path)
                        results[label] = {"path": path, "target_ms": target, "samples_ms": samples}
                    before = (await info.info("stats"))["total_commands_processed"]
                    for _ in range(20):
                        await client.get("/ui/")
                    after = (await info.info("stats"))["total_commands_processed"]
                    per_overview = (after - before - 1) / 20
            finally:
                await info.aclose()
                proc.terminate()
                await proc.wait()
    return {
        "queued": depth,
        "dead_letters": DEAD,
        "fill_s": fill_s,
        "pages": results,
        "redis_commands_per_overview": per_overview,
        # The served worker consumes the platform's standard queues, each counted on the page.
        "redis_commands_per_overview_said": redis_commands_per_overview(len(STANDARD_QUEUES)),
    }


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(data: dict[str, Any]) -> str:
    rows = []
    for label, page in data["pages"].items():
        samples = page["samples_ms"]
        p95 = _pct(samples, 0.95)
        rows.append(
            [
                label,
                f"≤ {page['target_ms']:.0f} ms",
                f"{statistics.median(samples):.1f}",
                f"{p95:.1f}",
                f"{max(samples):.1f}",
                "yes" if p95 <= page["target_ms"] else "**no**",
            ]
        )
    return "\n".join(
        [
            "## Ops dashboard at scale",
            "",
            f"`python -m worker serve` (one process, its defaults) with {data['queued']:,} jobs in the queue "
            f"(1,000,000 due, 10,000 deferred), {data['dead_letters']:,} dead letters over 30 days, and four "
            "worker snapshots with an hour of per-minute counts for every job. One logged-in client, one "
            f"request at a time over loopback, {REQUESTS} timed requests a page after {WARMUP} warm-up ones; "
            "milliseconds from request to last byte. `met` compares the p95 with the target.",
            "",
            table(["page", "target", "p50 ms", "p95 ms", "max ms", "met"], rows),
            "",
            "Redis commands per overview render, measured with INFO: "
            f"{data['redis_commands_per_overview']:.1f} "
            f"(the page says about {data['redis_commands_per_overview_said']}). Filling took "
            f"{data['fill_s']:.0f} s.",
            "",
            "Why it stays flat: the counts are ZCARD and ZCOUNT, a page of the queue is one ZRANGEBYSCORE "
            "with LIMIT and a GET per job on the page (a deep page costs Redis a walk to its offset, "
            "O(log N + offset), so pages stop at offset 100,000: page 20,000 took about 150 ms of Redis "
            "time per view in an earlier run; a page by rank would be O(log N) but needs ZRANGE, which "
            "the least-privilege producer user lacks), running jobs and workers come from the workers' "
            "snapshots, dead letters are read by the failed_at index one page at a time, and counts "
            "stop at a cap. A name filter on the queue (no index by name) reads at most 5,000 jobs and "
            "says so on the page.",
        ]
    )


def main() -> int:
    data = asyncio.run(measure())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
