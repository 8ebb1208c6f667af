"""Fixtures and helpers: a test-owned Redis for the session (and one per test that needs to
stop it), per-test queues, both execution modes, a plain redis-py client for inspecting and
forging keys, and `eventually` for waiting on a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from core.context import Mode
from core.registry import Registry
from devservices.redis import RedisServer
from jobs import REGISTRY
from settings import Settings
from tests.sample_jobs import RUNS, TEST_REGISTRY, TRIES
from worker.engine import WorkerService
from worker.ledger.migrate import apply_migrations, postgres_problem
from worker.producer import Producer
from worker.producer.inline import InlineExecutor
from worker.runtime import Runtime
from worker.telemetry import configure_logging

# The schema the runner's tables live in (the settings' default).
RUNNER_SCHEMA = "jobrunner"


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until `condition()` holds (it may be async), polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)


_RAW_CLIENTS: dict[str, aioredis.Redis] = {}


def raw_redis(target: Settings | str) -> aioredis.Redis:
    """A plain redis-py client on a test's Redis, for inspecting and forging keys behind the
    runner's back; closed when the test ends."""
    url = target if isinstance(target, str) else target.redis_url.get_secret_value()
    client = _RAW_CLIENTS.get(url)
    if client is None:
        client = _RAW_CLIENTS[url] = aioredis.Redis.from_url(url)
    return client


@pytest.fixture(autouse=True)
async def _close_raw_clients() -> AsyncIterator[None]:
    yield
    clients = list(_RAW_CLIENTS.values())
    _RAW_CLIENTS.clear()
    for client in clients:
        await client.aclose()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, kill, restart or flush; every write
    is fsynced, so a restart keeps what was written (a test that wants data lost flushes it)."""
    with RedisServer(persistent=True, extra_args=["--appendfsync", "always"]) as server:
        yield server


def _server_dsn() -> str:
    # The Makefile exports DATABASE_URL (a throwaway server when nothing answers on 5432).
    return os.environ.get("DATABASE_URL") or "postgresql://postgres@localhost:5432/postgres"


async def pg_connect(dsn: str) -> asyncpg.Connection:
    """A connection that sees the runner's tables, as every runner connection does (they live
    in the runner's own schema, not in `public`)."""
    return await asyncpg.connect(dsn, server_settings={"search_path": RUNNER_SCHEMA})


def pg_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool:
    """A pool like `pg_connect`'s connections; await it, or use it with `async with`."""
    return asyncpg.create_pool(dsn, server_settings={"search_path": RUNNER_SCHEMA}, **kwargs)


def _postgres_reachable(dsn: str) -> str | None:
    """None if the test server answers, else the one-line problem and its fix."""

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        try:
            settings = Settings(_env_file=None, database_url=SecretStr(dsn))  # type: ignore[call-arg]
        except ValueError:
            return f"DATABASE_URL: {type(exc).__name__}: {exc}"
        return postgres_problem(settings, exc)
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--browser", action="store_true", help="run the browser suite in tests/browser (make test-browser)"
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The browser suite needs Playwright and Chromium: it is its own target, `make test-browser`,
    # so `make test` passes on a machine with no browser.
    if collection_path == Path(__file__).parent / "browser" and not config.getoption("--browser"):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Every test needs the session's database: a Postgres that is not there is one readable
    # line and a stop, not an error per test. (Workers of a distributed run skip the check.)
    if config.option.collectonly or hasattr(config, "workerinput"):
        return
    problem = _postgres_reachable(_server_dsn())
    if problem is not None:
        raise pytest.UsageError(problem)


# The session's database, so settings made anywhere in the tests point at migrated tables.
_SESSION_DATABASE: dict[str, str] = {}


@pytest.fixture(scope="session", autouse=True)
def database_url() -> Iterator[str]:
    """A fresh database for this test session, migrated, dropped at the end."""
    server_dsn = _server_dsn()
    name = f"mbtest_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_db(server_dsn, name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    _SESSION_DATABASE["url"] = _with_db(server_dsn, name)
    yield _SESSION_DATABASE["url"]
    asyncio.run(drop())


def _with_db(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database (no migrations) on the test server, dropped afterwards."""
    name = f"mbtest_mig_{uuid.uuid4().hex[:8]}"
    server = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server owned by the test session, so tests may flush and inspect it freely."""
    with RedisServer() as server:
        yield server


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "queue_name": f"test:{uuid.uuid4().hex[:8]}",
        "log_format": "json",
        "retry_backoff_base": 0.01,
        "retry_backoff_max": 0.05,
        "redis_probe_interval": 0.05,
        "worker_shutdown_grace": 2.0,
        "worker_http_port": 0,
        "database_url": _SESSION_DATABASE.get("url") or _server_dsn(),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(redis_server: RedisServer, database_url: str) -> Settings:
    return make_settings(redis_server.url, database_url=database_url)


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.clear()
    TRIES.clear()


@pytest.fixture
def log_output() -> io.StringIO:
    """Everything logged during the test, as JSON lines."""
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0"), stream=stream)
    return stream


async def run_inline_job(
    settings: Settings, registry: Registry, job: str, *, job_id: str, kwargs: dict[str, Any]
) -> Any:
    """Run `job` inline through the runner's own path (every try), with a runtime of its own."""
    runtime = Runtime.build(settings, registry, role="test")
    try:
        return await InlineExecutor(settings, runtime.attempts).run(
            registry.get(job), job_id=job_id, kwargs=kwargs
        )
    finally:
        await runtime.aclose()


class RunningWorker:
    def __init__(self, service: WorkerService, task: asyncio.Task[int]) -> None:
        self.service = service
        self.task = task

    async def stop(self) -> int:
        if not self.task.done():
            self.service.request_stop()
        return await asyncio.wait_for(self.task, 10)


async def start_worker(settings: Settings) -> RunningWorker:
    service = WorkerService(settings, registry=TEST_REGISTRY, handle_signals=False)
    task = asyncio.create_task(service.run())
    return RunningWorker(service, task)


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[RunningWorker]:
    running = await start_worker(settings)
    yield running
    await running.stop()


@asynccontextmanager
async def running_producer(
    settings: Settings, mode: Mode, *, registry: Registry = REGISTRY
) -> AsyncIterator[Producer]:
    """A producer (on `jobs.REGISTRY` by default) in either mode: queued, with an in-process worker
    behind Redis, or inline, with Redis not configured."""
    if mode == "inline":
        inline_settings = settings.model_copy(update={"redis_url": SecretStr("")})
        async with Producer(inline_settings, registry=registry) as inline_producer:
            yield inline_producer
        return
    service = WorkerService(settings, registry=registry, handle_signals=False)
    running = RunningWorker(service, asyncio.create_task(service.run()))
    try:
        async with Producer(settings, registry=registry) as queued_producer:
            yield queued_producer
    finally:
        await running.stop()


@pytest.fixture(params=["queued", "inline"])
async def producer(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Producer]:
    """A producer on the test registry in each mode."""
    async with running_producer(settings, request.param, registry=TEST_REGISTRY) as each:
        yield each
