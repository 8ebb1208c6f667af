"""Versioned SQL migrations, applied in order under an advisory lock so two workers never race.

Each file in `worker/migrations/` named `NNNN_description.sql` is one version; it runs in its
own transaction and is recorded in `schema_migrations`. Applying is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from settings import Settings

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "apply_migrations",
    "available_migrations",
    "migrate_at_start",
    "pending_migrations",
]

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
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


async def _applied(conn: asyncpg.Connection) -> set[str]:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def pending_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    done = await _applied(conn)
    return [m.version for m in available_migrations(directory) if m.version not in done]


async def apply_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is missing; return the versions applied by this call."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        done = await _applied(conn)
        for migration in available_migrations(directory):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", migration.version)
            applied_now.append(migration.version)
            log.info("migration applied", version=migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def migrate_at_start(settings: Settings, *, timeout: float = _START_TIMEOUT_S) -> list[str] | None:
    """Apply pending migrations as a worker starts; on any trouble log it and carry on.

    A worker must not die because Postgres is away: jobs that do not need it keep running, and
    the rest fail with transient errors until it is back (then `python -m worker migrate`, or
    the next worker start, applies what is missing). Returns the versions applied, or None.
    """
    conn: asyncpg.Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=min(timeout, 10))
            return await apply_migrations(conn)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        log.warning(
            "postgres unreachable at start, migrations not applied",
            url=settings.database_url_redacted,
            error=f"{type(exc).__name__}: {exc}",
        )
    except asyncpg.PostgresError as exc:
        log.error("migration failed at start", error=f"{type(exc).__name__}: {exc}")
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
    return None
