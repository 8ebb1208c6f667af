"""The shared resources of one process, built once: the queue backend, the job dependencies,
the ledger, the metrics, the observability exports (traces, OTel metrics, error reports, each
only when configured), and the attempt runner with its outcome path.

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
from worker.telemetry.observe import Observability

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
    observability: Observability

    @classmethod
    def build(
        cls, settings: Settings, registry: Registry, *, role: str, socket_timeout: float | None = None
    ) -> Runtime:
        backend = RedisBackend(settings, role=role, socket_timeout=socket_timeout)
        deps = Deps(settings, cache=make_cache(settings))
        ledger = Ledger(deps)
        observability = Observability.build(settings)
        metrics = Metrics(mirror=observability.metrics)
        metrics.watch_breaker(lambda: not backend.usable)
        outcomes = Outcomes(metrics, ledger, errors=observability.errors)
        attempts = AttemptRunner(settings, deps, outcomes, tracing=observability.tracing)
        return cls(settings, registry, backend, deps, ledger, metrics, attempts, observability)

    async def aclose(self) -> None:
        """Wait for background bookkeeping, then close the dependencies and the backend."""
        try:
            await self.ledger.drain()
            await self.deps.aclose()
            await self.backend.aclose()
        finally:
            await self.observability.aclose()  # the last spans and error reports
