"""Versioned SQL migrations, applied in order under an advisory lock so two workers never race.

Every table of the runner lives in a Postgres schema of its own (`DATABASE_SCHEMA`, default
`jobrunner`), created here if missing, so the web app's schema tools (Drizzle's `push` syncs
`public`) never see them. Each file in `worker/ledger/migrations/` named `NNNN_description.sql`
is one version; it runs in its own transaction with the runner's schema as the search path and
is recorded in `<schema>.job_runner_migrations`. Applying is idempotent.

Installations from before the own schema kept their tables in `public`, with the versions in
`public.schema_migrations`; the first run of this code moves them into the runner's schema
(`ALTER TABLE ... SET SCHEMA` keeps rows, indexes and sequences) and renames the tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from core.deps import connect_postgres
from settings import Settings

__all__ = [
    "LEGACY_TABLES",
    "MIGRATIONS_DIR",
    "MIGRATIONS_TABLE",
    "Migration",
    "apply_migrations",
    "available_migrations",
    "has_legacy_layout",
    "migrate_at_start",
    "pending_migrations",
    "postgres_problem",
]

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The runner's tracker, in the runner's schema; named for the runner, not a generic
# `schema_migrations` another tool might also want.
MIGRATIONS_TABLE = "job_runner_migrations"
DEFAULT_SCHEMA = "jobrunner"
# What versions 0001-0006 created in `public`, and the tracker they were recorded in.
_LEGACY_TRACKER = "schema_migrations"
_LEGACY_MARK = "0001_job_runner_meta"
LEGACY_TABLES = (
    "email_deliveries",
    "analytics_events",
    "analytics_dirty_days",
    "analytics_daily",
    "analytics_alerts",
    "analytics_contacts",
    "analytics_digests",
    "job_spool",
    "durable_jobs",
    "dead_letters",
    "inline_outcomes",
)
# An arbitrary constant that identifies "our schema" among advisory locks.
_LOCK_KEY = 0x4D42_4A4F  # "MBJO"
# Bounds the whole start-up step (connect, wait for another worker's lock, apply).
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    versions = [p.stem for p in found]
    if len({v[:4] for v in versions}) != len(versions):
        raise RuntimeError(f"two migrations share a number in {directory}: {versions}")
    return [Migration(p.stem, p) for p in found]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tracker(schema: str) -> str:
    return f"{_ident(schema)}.{MIGRATIONS_TABLE}"


async def _exists(conn: asyncpg.Connection, schema: str, table: str) -> bool:
    found = await conn.fetchval("SELECT to_regclass($1)", f"{_ident(schema)}.{_ident(table)}")
    return found is not None


async def has_legacy_layout(conn: asyncpg.Connection, schema: str = DEFAULT_SCHEMA) -> bool:
    """True when the runner's tables are still in `public` (recorded in `public.schema_migrations`)
    and the runner's schema has no tracker yet: the next `apply_migrations` moves them."""
    if await _exists(conn, schema, MIGRATIONS_TABLE) or not await _exists(conn, "public", _LEGACY_TRACKER):
        return False
    try:
        ours = await conn.fetchval("SELECT 1 FROM public.schema_migrations WHERE version = $1", _LEGACY_MARK)
    except (asyncpg.UndefinedColumnError, asyncpg.DataError):
        return False  # another tool's schema_migrations
    return ours is not None


async def _move_legacy_tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Move the runner's tables from `public` into `schema`, in one transaction."""
    moved: list[str] = []
    async with conn.transaction():
        for table in LEGACY_TABLES:
            if not await _exists(conn, "public", table):
                continue
            if await _exists(conn, schema, table):
                log.warning(
                    "runner table exists in public and in the runner's schema; left in public",
                    table=table,
                    schema=schema,
                )
                continue
            await conn.execute(f"ALTER TABLE public.{_ident(table)} SET SCHEMA {_ident(schema)}")
            moved.append(table)
        await conn.execute(f"ALTER TABLE public.{_LEGACY_TRACKER} SET SCHEMA {_ident(schema)}")
        await conn.execute(f"ALTER TABLE {_ident(schema)}.{_LEGACY_TRACKER} RENAME TO {MIGRATIONS_TABLE}")
    log.info(
        "moved the runner's tables out of public into their own schema",
        schema=schema,
        tables=len(moved) + 1,
    )
    return moved


async def _applied(conn: asyncpg.Connection, schema: str) -> set[str]:
    if not await _exists(conn, schema, MIGRATIONS_TABLE):
        return set()
    rows = await conn.fetch(f"SELECT version FROM {_tracker(schema)}")  # noqa: S608 - quoted identifier
    return {r["version"] for r in rows}


async def pending_migrations(
    conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR, *, schema: str = DEFAULT_SCHEMA
) -> list[str]:
    """Versions not applied yet (all of them for a legacy layout, whose tracker is elsewhere).
    Reads only: creates nothing."""
    done = await _applied(conn, schema)
    return [m.version for m in available_migrations(directory) if m.version not in done]


async def apply_migrations(
    conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR, *, schema: str = DEFAULT_SCHEMA
) -> list[str]:
    """Create the runner's schema, move a legacy layout into it, apply what is missing; return
    the versions applied by this call. Leaves `conn`'s search path on the runner's schema."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        await conn.execute(f"SET search_path TO {_ident(schema)}")
        if await has_legacy_layout(conn, schema):
            await _move_legacy_tables(conn, schema)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_tracker(schema)} ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await _applied(conn, schema)
        for migration in available_migrations(directory):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {_tracker(schema)} (version) VALUES ($1)",  # noqa: S608
                    migration.version,
                )
            applied_now.append(migration.version)
            log.info("migration applied", version=migration.version, schema=schema)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


def postgres_problem(settings: Settings, exc: BaseException) -> str:
    """One line naming what is wrong with DATABASE_URL and how to fix it."""
    parts = urlsplit(settings.database_url.get_secret_value())
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    database = unquote(parts.path.lstrip("/")) or "(default)"
    user = unquote(parts.username or "") or "(default)"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"DATABASE_URL: database {database!r} does not exist on the Postgres at {where}; "
            f"create it (createdb -h {parts.hostname or 'localhost'} -p {parts.port or 5432} -U {user} "
            f"{database}), or unset DATABASE_URL and let `make run` / `make test` provide one"
        )
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return (
            f"DATABASE_URL: the Postgres at {where} refused user {user!r} ({exc}); "
            "fix the user and password in DATABASE_URL"
        )
    if isinstance(exc, OSError | TimeoutError | asyncpg.CannotConnectNowError):
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return (
            f"DATABASE_URL: cannot connect to Postgres at {where} ({reason}); start PostgreSQL there "
            "or point DATABASE_URL at a running server (unset, `make run` / `make test` start one)"
        )
    return f"DATABASE_URL: Postgres at {where}: {type(exc).__name__}: {exc}"


async def migrate_at_start(settings: Settings, *, timeout: float = _START_TIMEOUT_S) -> list[str] | None:
    """Apply pending migrations as a worker starts; on any trouble log it and carry on.

    A worker must not die because Postgres is away: jobs that do not need it keep running, and
    the rest fail with transient errors until it is back (then `python -m worker migrate`, or
    the next worker start, applies what is missing). Returns the versions applied, or None.
    """
    conn: asyncpg.Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await connect_postgres(settings, timeout=min(timeout, 10))
            return await apply_migrations(conn, schema=settings.database_schema)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        log.warning(
            "postgres unreachable at start, migrations not applied",
            url=settings.database_url_redacted,
            error=f"{type(exc).__name__}: {exc}",
            fix=postgres_problem(settings, exc),
        )
    except (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        log.error("postgres refused the worker, migrations not applied", fix=postgres_problem(settings, exc))
    except asyncpg.PostgresError as exc:
        log.error("migration failed at start", error=f"{type(exc).__name__}: {exc}")
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
    return None
