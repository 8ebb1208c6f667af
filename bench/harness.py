"""What the worker benchmark drives: a worker process of each kind, a client of each kind, and
Redis's own counters.

Kinds: `ours` (this runner), `arq-default` (plain arq as its `arq` command runs it) and
`arq-tuned` (plain arq with 100 concurrent jobs, 500 jobs read per poll, 10 ms polling). The
arq client writes arq's default records (pickle), as an arq app would.

With `BENCH_BASELINE=<path>` (a checkout of an earlier commit, e.g. a `git worktree`), the kind
`ours-before` runs that checkout's worker beside ours in the same run, fed by our producer (the
records on the wire are the same), so a change is measured against what it replaced.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, serialize_job
from pydantic import SecretStr

from bench import procstat
from bench.jobs import BENCH_REGISTRY
from settings import Settings
from worker.producer import JobHandle, Producer

__all__ = ["BASELINE", "KINDS", "OURS", "Client", "Counters", "Delta", "WorkerProcess", "client_for"]

ROOT = Path(__file__).resolve().parents[1]
BASELINE = os.environ.get("BENCH_BASELINE") or None
KINDS: tuple[str, ...] = ("ours", *(("ours-before",) if BASELINE else ()), "arq-tuned", "arq-default")
OURS = ("ours", "ours-before")


class WorkerProcess:
    """A worker of one kind in its own process, ready once it has run a first job."""

    def __init__(
        self, kind: str, url: str, queue: str, log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.kind, self.url, self.queue = kind, url, queue
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_dir / f"worker-{kind}-{queue.replace(':', '_')}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> WorkerProcess:
        root, env, kind = ROOT, self.env, self.kind
        if self.kind == "ours-before" and BASELINE:
            root, kind = Path(BASELINE), "ours"
            env = {**env, "PYTHONPATH": BASELINE}
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.worker_entry",
                kind,
                self.url,
                self.queue,
                cwd=root,
                env=env,
                stdout=log,
                stderr=log,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        await procstat.stop(self.proc)

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


class Client:
    """Enqueue and read results the way an app of this kind would."""

    kind: str
    queue: str
    redis: ArqRedis

    async def enqueue(self, name: str) -> Any:
        raise NotImplementedError

    async def result(self, handle: Any, timeout: float = 30.0) -> Any:
        raise NotImplementedError

    async def fill(self, name: str, count: int, due_ms: int) -> None:
        """Put `count` jobs in the queue, all due at `due_ms`, as fast as this kind can."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class OurClient(Client):
    def __init__(self, producer: Producer, kind: str = "ours") -> None:
        self.kind = kind
        self.producer = producer
        self.queue = producer.settings.queue_name
        # A plain client of its own for the counters; the producer's backend holds no raw client.
        self.redis = ArqRedis.from_url(producer.settings.redis_url.get_secret_value())

    async def enqueue(self, name: str) -> JobHandle[Any]:
        return await self.producer.enqueue_job(name)

    async def enqueue_many(self, name: str, count: int) -> list[JobHandle[Any]]:
        return await self.producer.enqueue_many(name, [{}] * count)

    async def result(self, handle: Any, timeout: float = 30.0) -> Any:
        return await handle.result(timeout=timeout)

    async def fill(self, name: str, count: int, due_ms: int) -> None:
        defer = (due_ms - time.time() * 1000) / 1000
        await self.producer.enqueue_many(name, [{}] * count, defer_by=defer if defer > 0 else None)

    async def close(self) -> None:
        await self.producer.close()
        await self.redis.aclose()


class ArqClient(Client):
    def __init__(self, kind: str, redis: ArqRedis, queue: str) -> None:
        self.kind, self.redis, self.queue = kind, redis, queue

    async def enqueue(self, name: str) -> Job:
        job = await self.redis.enqueue_job(name, _queue_name=self.queue)
        assert job is not None
        return job

    async def result(self, handle: Any, timeout: float = 30.0) -> Any:
        return await handle.result(timeout=timeout, poll_delay=0.002)

    async def fill(self, name: str, count: int, due_ms: int) -> None:
        # arq has no bulk enqueue; write its records directly, pipelined, as a bulk loader would.
        now = int(time.time() * 1000)
        for start in range(0, count, 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(count, start + 1000)):
                    job_id = f"fill-{due_ms}-{i}"
                    record = serialize_job(name, (), {}, None, now)
                    pipe.psetex(f"arq:job:{job_id}", due_ms - now + 86_400_000, record)
                    pipe.zadd(self.queue, {job_id: due_ms})
                await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


async def client_for(
    kind: str, url: str, queue: str, *, signing_key: str | None = None, otel_endpoint: str | None = None
) -> Client:
    if kind in OURS:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            redis_url=SecretStr(url),
            queue_name=queue,
            log_format="json",
            job_signing_keys=SecretStr(signing_key) if signing_key else None,
            otel_exporter_otlp_endpoint=otel_endpoint,
        )
        producer = Producer(settings, registry=BENCH_REGISTRY)
        await producer.start()
        return OurClient(producer, kind)
    redis = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    return ArqClient(kind, redis, queue)


@dataclass(frozen=True)
class Delta:
    commands: int
    round_trips: int
    by_command: dict[str, int]


class Counters:
    """Redis's counters over a window, less what the benchmark itself sends (INFO, ZCARD polls).

    Round trips are Redis's `total_writes_processed`: one per reply flush, so a pipeline counts
    once (checked by `calibrate`). Commands run inside scripts count as commands, as they do in
    `INFO commandstats`.
    """

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self._polls = 0
        self._start: tuple[int, int, dict[str, int]] = (0, 0, {})

    async def _snapshot(self) -> tuple[int, int, dict[str, int]]:
        stats = await self.redis.info("stats")
        by = await self.redis.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in by.items()}
        return int(stats["total_commands_processed"]), int(stats["total_writes_processed"]), calls

    async def zcard(self, queue: str) -> int:
        self._polls += 1
        return int(await self.redis.zcard(queue))

    async def start(self) -> None:
        self._start = await self._snapshot()
        self._polls = 0

    async def stop(self) -> Delta:
        commands, trips, calls = await self._snapshot()
        c0, t0, calls0 = self._start
        # Each counter read at the start INFO excludes that INFO; the window therefore holds
        # both start INFOs (stats, commandstats) and our ZCARD polls, each one command and trip.
        own = 2 + self._polls
        by = {k: v - calls0.get(k, 0) for k, v in calls.items() if k != "info"}
        by["zcard"] = by.get("zcard", 0) - self._polls
        return Delta(commands - c0 - own, trips - t0 - own, {k: v for k, v in by.items() if v})

    async def calibrate(self) -> tuple[int, int]:
        """Round trips seen for 1 PING and for a pipeline of 10 PINGs (expect 1 and 1)."""
        await self.start()
        await self.redis.ping()
        single = (await self.stop()).round_trips
        await self.start()
        async with self.redis.pipeline(transaction=False) as pipe:
            for _ in range(10):
                pipe.ping()
            await pipe.execute()
        return single, (await self.stop()).round_trips


def loadavg() -> float:
    return os.getloadavg()[0]
