"""Rate limits: how often jobs may spend from a named limit (`RATE_LIMITS=ai_requests=500/min`).

Held in Redis and shared by every worker (the `ACQUIRE` script: GCRA with reservations, one
round trip for all the jobs a worker claims at once). Why one Lua script rather than the
`limits` library: a job over the limit must not fail or wait in a slot, but wait in its queue
for its turn, and a turn handed out must not be taken by a job that arrives later. That needs
the limit's state and a per-job reservation changed together atomically, in the same round
trip, which a generic limiter does not offer; the algorithm is a dozen lines.

A limit's state is one number, its theoretical arrival time (TAT): spending `cost` moves it
`cost x interval` ahead (interval = period / count), and a job may start once the TAT is not
ahead of now. So starts are spaced evenly (0.5% wider than the limit, see `_MARGIN`) and never
exceed the limit in any window.

With Redis unreachable (the producer running jobs inline), `LocalLimiter` applies the same
rule per process: an inline run waits for its turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from core.errors import BackendError
from core.registry import JobDefinition
from settings import Settings
from worker.backend import QueueBackend, keys

__all__ = ["LocalLimiter", "RateLimits", "SharedLimiter"]

log = structlog.get_logger(__name__)

Costs = Sequence[tuple[str, int]]
# Turns are spaced 0.5% wider than the limit: a job that starts a little late for its turn (a
# busy event loop) then still cannot make any window hold more starts than the limit allows.
_MARGIN = 1.005


class RateLimits:
    """The limits this deployment configures: name -> ms between two units."""

    def __init__(self, settings: Settings) -> None:
        table = settings.rate_limit_table
        self.interval_ms: dict[str, float] = {
            name: per_s * 1000.0 / count * _MARGIN for name, (count, per_s) in table.items()
        }
        self.namespace = settings.queue_name

    def __bool__(self) -> bool:
        return bool(self.interval_ms)

    def costs(self, definition: JobDefinition[Any, Any], payload: Mapping[str, Any]) -> list[tuple[str, int]]:
        """What a run of `definition` with `payload` spends of each configured limit."""
        if not self.interval_ms or not definition.rate_limits:
            return []
        try:
            costs = definition.costs(payload, self.interval_ms)
        except Exception as exc:  # a cost function meeting odd arguments: spend one unit
            log.warning("rate limit cost not computed; counting 1", job=definition.name, error=str(exc))
            costs = [(rc.limit, 1) for rc in definition.rate_limits if rc.limit in self.interval_ms]
        return [(name, cost) for name, cost in costs if cost > 0]


class LocalLimiter:
    """The same rule in one process (inline runs while Redis is down): `delay` reserves the
    next turn and says how long to wait for it."""

    def __init__(self, limits: RateLimits) -> None:
        self._limits = limits
        self._tat: dict[str, float] = {}

    def delay(self, costs: Costs) -> float:
        now = time.time() * 1000
        start = max([now, *(self._tat.get(name, 0.0) for name, _ in costs)])
        for name, cost in costs:
            self._tat[name] = max(self._tat.get(name, 0.0), start) + cost * self._limits.interval_ms[name]
        return (start - now) / 1000

    async def wait_turn(self, costs: Costs) -> None:
        if costs:
            delay = self.delay(costs)
            if delay > 0:
                await asyncio.sleep(delay)


class SharedLimiter:
    """Turns from the limits held in Redis. Concurrent requests (the jobs of one claim) go out
    as one script call; with Redis unreachable, the process's own `LocalLimiter` decides."""

    def __init__(self, backend: QueueBackend, limits: RateLimits) -> None:
        self._backend = backend
        self._limits = limits
        self._local = LocalLimiter(limits)
        self._pending: list[tuple[str, Costs, asyncio.Future[int]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def turn(self, job_id: str, costs: Costs) -> int:
        """0 when the job may start now, else the time (epoch ms) reserved for it."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush_soon)
        self._pending.append((job_id, costs, future))
        return await future

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[tuple[str, Costs, asyncio.Future[int]]]) -> None:
        names = sorted({name for _, costs, _ in batch for name, _ in costs})
        limits = [(keys.rate_key(self._limits.namespace, n), self._limits.interval_ms[n], 0.0) for n in names]
        jobs = [(job_id, [dict(costs).get(n, 0) for n in names]) for job_id, costs, _ in batch]
        try:
            turns = await self._backend.acquire(limits, jobs)
        except BackendError as exc:
            log.warning("rate limits unreachable in Redis; this process limits alone", error=str(exc))
            turns = []
            for _, costs, _ in batch:
                delay = self._local.delay(costs)
                turns.append(0 if delay <= 0 else int(time.time() * 1000 + delay * 1000))
        for (_, _, future), turn in zip(batch, turns, strict=True):
            if not future.done():
                future.set_result(turn)
