"""A worker's snapshot, written to the backend for `python -m worker stats` and the read side:
its recent counts and the ids of the jobs it runs now.

Every 10 s while jobs finish and every 5 minutes when idle, so watching costs an idle worker a
few hundred Redis commands a day, and nothing is written per job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from core.errors import BackendError
from worker.backend import QueueBackend
from worker.telemetry import RecentCounts

__all__ = ["PUBLISH_BUSY_S", "PUBLISH_IDLE_S", "SNAPSHOT_TTL_MS", "publish_forever", "publish_once"]

PUBLISH_BUSY_S = 10.0
PUBLISH_IDLE_S = 300.0
SNAPSHOT_TTL_MS = 600_000


async def publish_once(
    backend: QueueBackend,
    counts: RecentCounts,
    worker_id: str,
    queue: str,
    fields: Callable[[], dict[str, Any]],
) -> None:
    snapshot = counts.snapshot(worker_id, queue, **fields())
    await backend.publish_snapshot(worker_id, snapshot, SNAPSHOT_TTL_MS)


async def publish_forever(
    backend: QueueBackend,
    counts: RecentCounts,
    worker_id: str,
    queue: str,
    fields: Callable[[], dict[str, Any]],
) -> None:
    last = 0.0
    while True:
        await asyncio.sleep(1.0)
        since = time.monotonic() - last
        if not backend.usable or not (
            (counts.changed and since >= PUBLISH_BUSY_S) or since >= PUBLISH_IDLE_S
        ):
            continue
        try:
            await publish_once(backend, counts, worker_id, queue, fields)
            last = time.monotonic()
        except BackendError:
            continue  # the claim loop reports outages; stats just wait for the next round
