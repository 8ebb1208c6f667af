"""Shared dependencies for jobs, built lazily from one lifespan.

A job family declares each resource it needs as a `Resource` (a name, an async factory and
an async closer) in its own module; `Deps.get(resource)` builds it on first use and
`open_deps()` closes whatever was built. The owning process may `provide()` a resource it
built itself (and closes itself). The worker and the inline runner both use
`open_deps`, so a job sees the same kind of objects in both modes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import asyncpg

from settings import Settings

__all__ = [
    "POSTGRES",
    "Cache",
    "Deps",
    "Resource",
    "connect_postgres",
    "open_deps",
    "postgres_server_settings",
]

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Resource(Generic[T]):
    name: str
    create: Callable[[Settings], Awaitable[T]]
    close: Callable[[T], Awaitable[None]]


class Cache(Protocol):
    """A byte cache with expiry; failures inside it never fail a job (it returns None instead)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


class Deps:
    """Lazily built, shared resources; safe to use from many concurrent jobs.

    `cache` is given by whoever owns the process (worker or producer), since it rides on their
    Redis connection; jobs only see the `Cache` protocol.
    """

    def __init__(self, settings: Settings, *, cache: Cache) -> None:
        self.settings = settings
        self.cache = cache
        self._built: dict[str, Any] = {}
        self._order: list[Resource[Any]] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    async def get(self, resource: Resource[T]) -> T:
        if resource.name in self._built:
            return cast(T, self._built[resource.name])
        if self._closed:
            raise RuntimeError(f"dependencies are closed; cannot build {resource.name!r}")
        lock = self._locks.setdefault(resource.name, asyncio.Lock())
        async with lock:
            if resource.name not in self._built:
                self._built[resource.name] = await resource.create(self.settings)
                self._order.append(resource)
        return cast(T, self._built[resource.name])

    def provide(self, resource: Resource[T], value: T) -> None:
        """Hand in a resource the owning process built (worker or producer); it also closes it.

        This is how jobs reach what only the owner can make, such as its Redis-backed queues,
        without importing the worker.
        """
        if resource.name in self._built:
            raise RuntimeError(f"resource {resource.name!r} is already built or provided")
        self._built[resource.name] = value

    async def aclose(self) -> None:
        self._closed = True
        # Close in reverse order of creation, like an ExitStack.
        for resource in reversed(self._order):
            value = self._built.pop(resource.name)
            await resource.close(value)
        self._order.clear()
        await self.cache.aclose()


@asynccontextmanager
async def open_deps(settings: Settings, *, cache: Cache) -> AsyncIterator[Deps]:
    deps = Deps(settings, cache=cache)
    try:
        yield deps
    finally:
        await deps.aclose()


def postgres_server_settings(settings: Settings) -> dict[str, str]:
    """Session settings of every runner connection: the runner's schema is the search path, so
    its queries name tables without a schema and nothing lands in the web app's `public`."""
    return {"search_path": settings.database_schema}


async def connect_postgres(settings: Settings, *, timeout: float = 10) -> asyncpg.Connection:
    """One connection for the runner (migrations, ops commands), with the runner's search path."""
    return await asyncpg.connect(
        settings.database_url.get_secret_value(),
        timeout=timeout,
        server_settings=postgres_server_settings(settings),
    )


async def _create_pool(settings: Settings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=10,
        timeout=5,
        command_timeout=60,
        server_settings=postgres_server_settings(settings),
    )


async def _close_pool(pool: asyncpg.Pool) -> None:
    await pool.close()


POSTGRES: Resource[asyncpg.Pool] = Resource("postgres", _create_pool, _close_pool)
