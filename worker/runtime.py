"""The shared resources of one process, built once: the queue backend, the job dependencies,
the ledger, the metrics, and the attempt runner with its outcome path.

A standalone `Producer` builds its own; a worker builds one and hands it to the producer it
embeds (for jobs that queue follow-up jobs), so a worker has one connection pool of each kind
and one set of metrics, whoever runs a job.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.deps import Deps
from core.registry import Registry
from settings import Settings
from worker.backend import QueueBackend, RedisBackend, make_cache
from worker.execution import AttemptRunner, Outcomes
from worker.ledger import Ledger
from worker.telemetry import Metrics

__all__ = ["Runtime"]


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    registry: Registry
    backend: QueueBackend
    deps: Deps
    ledger: Ledger
    metrics: Metrics
    attempts: AttemptRunner

    @classmethod
    def build(
        cls, settings: Settings, registry: Registry, *, role: str, socket_timeout: float | None = None
    ) -> Runtime:
        backend = RedisBackend(settings, role=role, socket_timeout=socket_timeout)
        deps = Deps(settings, cache=make_cache(settings))
        ledger = Ledger(deps)
        metrics = Metrics()
        metrics.watch_breaker(lambda: not backend.usable)
        attempts = AttemptRunner(settings, deps, Outcomes(metrics, ledger))
        return cls(settings, registry, backend, deps, ledger, metrics, attempts)

    async def aclose(self) -> None:
        """Wait for background bookkeeping, then close the dependencies and the backend."""
        await self.ledger.drain()
        await self.deps.aclose()
        await self.backend.aclose()
