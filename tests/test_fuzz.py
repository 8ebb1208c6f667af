"""Thousands of random and adversarial entries written where the worker reads, beside real jobs:
the worker never exits, every real job runs exactly once, every bad entry is dead-lettered (or
quarantined) with one log line, and the worker goes back to idle."""

from __future__ import annotations

import asyncio
import io
import math
import random
import time
from typing import Any

import orjson

from settings import Settings
from tests.conftest import eventually, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import keys
from worker.backend.protocol import PoisonEntry
from worker.producer import Producer

SEED = 20261129
BAD_ENTRIES = 2500


def _bad_record(rng: random.Random, job_id: str) -> bytes | None:
    """A record no producer of ours writes (or none at all: the job key is missing)."""
    choice = rng.randrange(14)
    if choice == 0:
        return None
    if choice == 1:
        return rng.randbytes(rng.randrange(1, 200))
    if choice == 2:
        return b"\x80\x04" + rng.randbytes(40)  # a pickle header
    shapes: list[Any] = [
        [1, 2, 3],
        "a string",
        {"f": 42, "k": {}},
        {"f": "record", "k": "not a dict", "et": 1},
        {"f": "record", "a": ["positional"], "k": {}, "et": 1},
        {"f": "no_such_job", "a": [], "k": {}, "et": 1},
        {"f": "record", "a": [], "k": {"key": 12}, "et": 1},  # wrong argument type
        {"f": "record", "a": [], "k": {"wrong": "x"}, "et": 1},
        {
            "f": "record",
            "a": [],
            "k": {"key": f"fuzz-{job_id}"},
            "et": 1,
            "t": rng.choice(["1", [1], 1.5, {}]),
        },
        {"f": "record", "a": [], "k": {"key": f"fuzz-{job_id}"}, "et": rng.choice([-1, 1e300, "x", None])},
    ]
    if choice < 2 + len(shapes) + 1:
        return orjson.dumps(shapes[(choice - 3) % len(shapes)])
    return b'{"f": "takes_any", "a": [], "k": {"data": ' + b"[" * 400 + b"]" * 400 + b'}, "et": 1}'


def _bad_member(rng: random.Random, i: int) -> tuple[bytes, float]:
    kind = rng.randrange(6)
    now_ms = time.time() * 1000
    if kind == 0:
        return b"\xff\xfe" + rng.randbytes(8), now_ms  # not UTF-8
    if kind == 1:
        return b"long-" + b"x" * rng.randrange(201, 5000), now_ms  # over the id limit
    if kind == 2:
        return f"inf-{i}".encode(), math.inf
    if kind == 3:
        return f"neg-inf-{i}".encode(), -math.inf
    if kind == 4:
        return f"has space {i}".encode(), now_ms
    return f"fuzz-{i}".encode(), rng.choice([now_ms - rng.randrange(10**6), -5.0, 0.0])


async def test_the_worker_survives_adversarial_input_and_real_jobs_run_once(
    settings: Settings, log_output: io.StringIO
) -> None:
    rng = random.Random(SEED)
    redis = raw_redis(settings)
    queue = settings.queue_name
    members: dict[bytes, float] = {}
    for i in range(BAD_ENTRIES):
        member, score = _bad_member(rng, i)
        members[member] = score
        record = _bad_record(rng, member.decode("utf-8", "replace"))
        if record is not None:
            await redis.set(keys.JOB_PREFIX.encode() + member, record)
        if rng.random() < 0.2:  # junk try counters and notes beside them
            await redis.set(keys.RETRY_PREFIX.encode() + member, rng.choice([b"x", b"-3", b"1e9", b"99"]))
    for start in range(0, len(members), 500):
        await redis.zadd(queue, dict(list(members.items())[start : start + 500]))
    await redis.set(keys.schedule_key(queue, "tick"), b"\x00garbage")
    await redis.set(keys.worker_stats_key("forged"), rng.randbytes(64))
    await redis.zadd(keys.WORKERS_KEY, {"forged": time.time() * 1000})
    await redis.zadd(keys.wake_key(queue), {f"w{i}": i for i in range(5000)})

    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            handles = [await producer.enqueue_job("record", {"key": f"real-{i}"}) for i in range(200)]
            await redis.set(keys.wake_key(queue), b"wrong type")  # mid-run, too
            results = [await h.result(timeout=45) for h in handles]
            await eventually(lambda: _empty(settings), timeout=45, what="every entry handled")
            assert not worker.task.done()  # never exited
            # Back to idle: a few commands a second at most, not a spinning claim loop.
            before = int((await redis.info("stats"))["total_commands_processed"])
            await asyncio.sleep(1.0)
            after = int((await redis.info("stats"))["total_commands_processed"])
            letters = await producer.ledger.dead_letters(limit=10 * BAD_ENTRIES)
    finally:
        assert await worker.stop() == 0
    assert [r["key"] for r in results] == [f"real-{i}" for i in range(200)]
    real_runs = [key for key, _, _ in RUNS if key.startswith("real-")]
    assert sorted(real_runs) == sorted(f"real-{i}" for i in range(200))  # each exactly once
    assert after - before < 50
    ran = {key.removeprefix("fuzz-") for key, _, _ in RUNS if key.startswith("fuzz-")}
    dead = {letter.job_id for letter in letters}
    handled = ran | dead
    unaccounted = [m for m in members if PoisonEntry(m, "", "").shown_id not in handled]
    assert unaccounted == []  # every bad entry ran harmlessly or is a dead letter
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    assert not [line for line in lines if "exception" in line]  # one line each, no tracebacks


async def _empty(settings: Settings) -> bool:
    return int(await raw_redis(settings).zcard(settings.queue_name)) == 0
