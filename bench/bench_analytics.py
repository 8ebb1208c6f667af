"""Analytics ingestion figures: events per second from the producer call to committed rows, next to
the naive baseline of one INSERT per event, and the memory of the in-process buffer when full.

    python -m bench.bench_analytics    # prints a markdown section, writes bench/results/analytics.json

Redis is a throwaway server on loopback; Postgres is DATABASE_URL's server (default: the local
one), in a database created for the run and dropped after it. The worker runs in this process,
as `python -m worker run` would, with the real registry and its every-second flush schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from bench.database import SERVER_DSN, scratch_database
from devservices.redis import RedisServer
from jobs.analytics.ingest import AnalyticsIngest, EventBufferFull, EventsNotDelivered
from settings import Settings
from worker.engine import WorkerService
from worker.producer import Producer
from worker.telemetry import configure_logging

RUNS = 5
EVENTS = 300_000  # per end-to-end run
PER_CALL = 1_000  # events per track_events call
BASELINE_EVENTS = 20_000  # per naive run: it is slow
SINGLE_EVENTS = 20_000  # per run of one-event calls
CALLERS = 50  # concurrent callers of track_event, like web requests
RESULTS = Path(__file__).parent / "results" / "analytics.json"
# The benchmark reads and resets the runner's tables, which live in its own schema.
RUNNER_PATH = {"search_path": "jobrunner"}


def _settings(redis_url: str, database_url: str, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=SecretStr(redis_url),
        database_url=SecretStr(database_url),
        queue_name=f"bench:{uuid.uuid4().hex[:8]}",
        log_format="json",
        **extra,
    )


def _template() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "type": "stream",
            "artist_id": f"artist-{i % 200}",
            "track_id": f"track-{i % 2000}",
            "source": ("spotify", "apple_music", "youtube", "web")[i % 4],
            "occurred_at": now - timedelta(seconds=i),
        }
        for i in range(PER_CALL)
    ]


def _batches(run: str, total: int) -> Callable[[int], list[dict[str, Any]]]:
    template = _template()

    def batch(n: int) -> list[dict[str, Any]]:
        start = n * PER_CALL
        return [{**e, "event_id": f"{run}-{start + i}"} for i, e in enumerate(template[: total - start])]

    return batch


async def _stored(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM analytics_events"))


async def _reset(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE analytics_events, analytics_dirty_days")
    await conn.execute("VACUUM ANALYZE analytics_events")


async def _wait_stored(conn: asyncpg.Connection, expected: int, timeout: float = 120.0) -> float:
    deadline = time.perf_counter() + timeout
    while (stored := await _stored(conn)) < expected:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{stored} of {expected} events stored after {timeout}s")
        await asyncio.sleep(0.01)
    return time.perf_counter()


async def _single_event_calls(producer: Producer, run: str) -> None:
    """CALLERS concurrent callers, each sending its share one `track_event` at a time."""
    template = _template()

    async def caller(k: int) -> None:
        for i in range(k, SINGLE_EVENTS, CALLERS):
            await producer.track_event(**template[i % PER_CALL], event_id=f"{run}-{i}")

    await asyncio.gather(*(caller(k) for k in range(CALLERS)))


async def end_to_end_via_redis(redis_url: str, dsn: str) -> dict[str, list[float]]:
    """End-to-end and producer-call events/s per run, worker flushing from Redis."""
    end_to_end, accept, single = [], [], []
    settings = _settings(redis_url, dsn)
    service = WorkerService(settings, handle_signals=False)
    worker = asyncio.create_task(service.run())
    conn = await asyncpg.connect(dsn, server_settings=RUNNER_PATH)
    try:
        async with Producer(settings) as producer:
            for run in range(RUNS):
                await _reset(conn)
                batch = _batches(f"r{run}", EVENTS)
                started = time.perf_counter()
                for n in range(EVENTS // PER_CALL):
                    result = await producer.track_events(batch(n))
                    if result.stored_in != "redis":
                        raise RuntimeError(f"events went to {result.stored_in}, not Redis")
                accepted = time.perf_counter()
                done = await _wait_stored(conn, EVENTS)
                accept.append(EVENTS / (accepted - started))
                end_to_end.append(EVENTS / (done - started))
            for run in range(RUNS):
                await _reset(conn)
                started = time.perf_counter()
                await _single_event_calls(producer, f"s{run}")
                single.append(SINGLE_EVENTS / (await _wait_stored(conn, SINGLE_EVENTS) - started))
    finally:
        await conn.close()
        service.request_stop()
        await asyncio.wait_for(worker, 30)
    return {"batched": end_to_end, "accept": accept, "single": single}


async def end_to_end_in_memory(dsn: str) -> list[float]:
    """Redis down: the producer's buffer, drained by the flush job run inline, until close()."""
    samples = []
    conn = await asyncpg.connect(dsn, server_settings=RUNNER_PATH)
    try:
        for run in range(RUNS):
            await _reset(conn)
            batch = _batches(f"m{run}", EVENTS)
            started = time.perf_counter()
            async with Producer(_settings("", dsn)) as producer:
                for n in range(EVENTS // PER_CALL):
                    await producer.track_events(batch(n))
            done = await _wait_stored(conn, EVENTS, timeout=1)  # close() returned: all stored
            samples.append(EVENTS / (done - started))
    finally:
        await conn.close()
    return samples


async def naive_insert_per_event(dsn: str) -> list[float]:
    """The baseline: each event one INSERT, awaited, in autocommit."""
    samples = []
    conn = await asyncpg.connect(dsn, server_settings=RUNNER_PATH)
    insert = (
        "INSERT INTO analytics_events"
        " (event_id, event_type, artist_id, track_id, source, occurred_at, quantity)"
        " VALUES ($1, $2, $3, $4, $5, $6, 1)"
    )
    try:
        for run in range(RUNS):
            await _reset(conn)
            batch = _batches(f"n{run}", BASELINE_EVENTS)
            started = time.perf_counter()
            for n in range(BASELINE_EVENTS // PER_CALL):
                for e in batch(n):
                    fields = ("event_id", "type", "artist_id", "track_id", "source", "occurred_at")
                    await conn.execute(insert, *(e[f] for f in fields))
            samples.append(BASELINE_EVENTS / (time.perf_counter() - started))
    finally:
        await conn.close()
    return samples


async def buffer_memory_at_limit() -> dict[str, float]:
    """Fill the in-process buffer (Redis and Postgres both unreachable) and measure what it holds."""
    settings = _settings(
        "",
        "postgresql://postgres@127.0.0.1:1/nowhere",
        analytics_buffer_full_timeout_s=0.05,
        analytics_close_timeout_s=0.05,
        analytics_buffer_flush_interval_s=3600,
    )
    producer = Producer(settings)
    await producer.start()
    batch = _batches("mem", 10**9)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    n = 0
    try:
        while True:
            await producer.track_events(batch(n))
            n += 1
    except EventBufferFull:
        pass
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    plugin = producer.plugin("analytics")
    assert isinstance(plugin, AnalyticsIngest)
    buffer = plugin.ingest.buffer
    growth = after.compare_to(before, "filename")
    held = sum(s.size_diff for s in growth if "ingest/buffer" in str(s.traceback))
    traced = sum(s.size_diff for s in growth)
    figures: dict[str, float] = {
        "limit_bytes": buffer.max_bytes,
        "events_held": buffer.events,
        "encoded_bytes": buffer.bytes_used,
        "allocated_by_buffer_bytes": held,
        "process_growth_bytes": traced,
    }
    with contextlib.suppress(EventsNotDelivered):  # expected: there is nowhere to write them
        await producer.close()
    return figures


def _summary(samples: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def _fmt(samples: Sequence[float]) -> str:
    s = _summary(samples)
    return f"{s['median']:,.0f} (min {s['min']:,.0f}, max {s['max']:,.0f})"


async def main() -> dict[str, Any]:
    configure_logging(_settings("", SERVER_DSN), stream=io.StringIO())
    logging.getLogger().setLevel(logging.INFO)  # the realistic cost: one JSON line per job
    with RedisServer() as redis:
        async with scratch_database() as dsn:
            via_redis = await end_to_end_via_redis(redis.url, dsn)
            redis_e2e, accept, single = via_redis["batched"], via_redis["accept"], via_redis["single"]
            memory_e2e = await end_to_end_in_memory(dsn)
            naive = await naive_insert_per_event(dsn)
    memory = await buffer_memory_at_limit()
    results = {
        "events_per_run": EVENTS,
        "events_per_call": PER_CALL,
        "end_to_end_via_redis_events_per_s": _summary(redis_e2e),
        "producer_accept_events_per_s": _summary(accept),
        "end_to_end_single_event_calls_events_per_s": _summary(single),
        "end_to_end_redis_down_events_per_s": _summary(memory_e2e),
        "naive_insert_per_event_events_per_s": _summary(naive),
        "speedup_vs_naive": statistics.median(redis_e2e) / statistics.median(naive),
        "buffer_at_limit": memory,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    mib = 1024 * 1024
    rows = [
        ["end to end, Redis up: track_events -> Redis list -> flush job (COPY) -> commit", _fmt(redis_e2e)],
        ["  producer calls alone (validate, encode, push to Redis)", _fmt(accept)],
        [f"end to end, Redis up, one event per call ({CALLERS} concurrent callers)", _fmt(single)],
        ["end to end, Redis down: in-process buffer -> flush job inline -> committed", _fmt(memory_e2e)],
        ["naive baseline: one INSERT per event, awaited, autocommit", _fmt(naive)],
    ]
    print("## Analytics ingestion\n")
    print(
        f"Events per second, median of {RUNS} runs (min, max); {EVENTS:,} events per run in calls of "
        f"{PER_CALL:,} ({SINGLE_EVENTS:,} one at a time, {BASELINE_EVENTS:,} for the baseline), timed "
        "from the first call until every "
        "row is committed. Worker, producer and Postgres share this machine.\n"
    )
    print("| path | events/s |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(
        f"\nEnd to end through Redis is {results['speedup_vs_naive']:.0f}x the naive baseline.\n\n"
        f"In-process buffer at its limit ({memory['limit_bytes'] / mib:.0f} MiB, "
        "ANALYTICS_BUFFER_MAX_BYTES): "
        f"{memory['events_held']:,.0f} events, {memory['encoded_bytes'] / mib:.1f} MiB encoded, "
        f"{memory['allocated_by_buffer_bytes'] / mib:.1f} MiB allocated by the buffer "
        f"({memory['allocated_by_buffer_bytes'] / max(memory['events_held'], 1):.0f} bytes per event); "
        f"the process grew by {memory['process_growth_bytes'] / mib:.1f} MiB in all."
    )
    return results


if __name__ == "__main__":
    asyncio.run(main())
