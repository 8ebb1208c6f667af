"""`python -m worker stats`: what an operator sees about queues and recent throughput."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson

from core.errors import JobFailed
from settings import Settings
from tests.conftest import RunningWorker
from tests.sample_jobs import TEST_REGISTRY
from worker.engine.snapshots import publish_once
from worker.producer import Producer

ROOT = Path(__file__).resolve().parents[1]


async def test_stats_shows_depths_throughput_and_failure_rate(
    settings: Settings, worker: RunningWorker
) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handles = [await producer.enqueue_job("record", {"key": f"k{i}"}) for i in range(6)]
        handles += [await producer.enqueue_job("refuse", {"reason": "r"}) for _ in range(2)]
        for handle in handles:
            with contextlib.suppress(JobFailed):
                await handle.result(timeout=10)
        await producer.enqueue_job("record", {"key": "later"}, defer_by=60)
        service = worker.service
        await publish_once(
            service.backend, service.metrics.recent, service.worker.token, settings.queue_name, dict
        )

    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "QUEUE_NAME": settings.queue_name,
    }
    run = [sys.executable, "-m", "worker", "stats"]
    as_json = await asyncio.to_thread(
        subprocess.run, [*run, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert as_json.returncode == 0, as_json.stderr
    report = orjson.loads(as_json.stdout)
    assert (report["due"], report["deferred"], report["in_progress"]) == (0, 1, 0)
    assert len(report["workers"]) == 1
    assert report["jobs"]["record"]["complete"] == 6
    assert report["jobs"]["refuse"]["failed"] == 2
    assert report["jobs"]["refuse"]["failure_rate"] == 1.0

    table = await asyncio.to_thread(
        subprocess.run, run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert table.returncode == 0, table.stderr
    assert re.search(r"default +0 +1 +0  active", table.stdout), table.stdout
    assert any(line.startswith("refuse") and line.endswith("100.0%") for line in table.stdout.splitlines())
