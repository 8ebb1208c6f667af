"""Job families' plug-ins, as the producer and the worker run them (see `core.plugin`).

`Plugins.start` makes one instance of each factory in the registry and starts it with a host
that offers the runner's own resources; the owner calls `redis_back` after an outage and
`close` at shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from core.deps import Deps
from core.enqueue import Enqueue, EnqueueOutcome
from core.plugin import BatchList, EventSink, Plugin, Role
from settings import Settings
from worker.runtime import Runtime

__all__ = ["Host", "Plugins"]

log = structlog.get_logger(__name__)


class Host:
    """The `PluginHost` a producer or worker gives its plug-ins."""

    def __init__(self, runtime: Runtime, role: Role, enqueue: Enqueue) -> None:
        self._runtime = runtime
        self._role = role
        self._enqueue = enqueue

    @property
    def settings(self) -> Settings:
        return self._runtime.settings

    @property
    def role(self) -> Role:
        return self._role

    @property
    def deps(self) -> Deps:
        return self._runtime.deps

    @property
    def backend_usable(self) -> bool:
        return self._runtime.backend.usable

    def batch_list(self, namespace: str) -> BatchList:
        return self._runtime.backend.batch_list(namespace, self._runtime.settings.queue_name)

    async def enqueue(self, job: str, kwargs: Mapping[str, Any], *, job_id: str) -> EnqueueOutcome:
        return await self._enqueue(job, kwargs, job_id=job_id)

    async def run_attempt(self, job: str, *, job_id: str) -> None:
        definition = self._runtime.registry.get(job)
        await self._runtime.attempts.attempt(definition, job_id=job_id, kwargs={}, job_try=1, mode="inline")


class Plugins:
    """The running plug-ins of one process."""

    def __init__(self) -> None:
        self.running: list[Plugin] = []

    async def start(self, runtime: Runtime, role: Role, enqueue: Enqueue) -> None:
        host = Host(runtime, role, enqueue)
        for factory in runtime.registry.plugins:
            plugin = factory()
            await plugin.start(host)
            self.running.append(plugin)

    def get(self, name: str) -> Plugin:
        for plugin in self.running:
            if plugin.name == name:
                return plugin
        raise LookupError(f"no plug-in named {name!r} runs here")

    def event_sink(self) -> EventSink | None:
        return next((p for p in self.running if isinstance(p, EventSink)), None)

    async def redis_back(self) -> None:
        for plugin in self.running:
            await plugin.redis_back()

    async def close(self) -> None:
        """Close every plug-in; the first error is raised once all are closed."""
        first: BaseException | None = None
        for plugin in reversed(self.running):
            try:
                await plugin.close()
            except Exception as exc:
                log.error(
                    "plug-in did not close cleanly", plugin=plugin.name, error=f"{type(exc).__name__}: {exc}"
                )
                first = first or exc
        if first is not None:
            raise first
