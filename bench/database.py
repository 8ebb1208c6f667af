"""A scratch Postgres database for one benchmark: created on DATABASE_URL's server, migrated,
dropped afterwards (make bench provisions a throwaway server when none answers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from worker.ledger.migrate import apply_migrations

__all__ = ["SERVER_DSN", "scratch_database"]

SERVER_DSN = os.environ.get("DATABASE_URL") or "postgresql://postgres@localhost:5432/postgres"


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """Yields the DSN of a fresh database with the runner's tables."""
    name = f"mbbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(SERVER_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_db(SERVER_DSN, name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        yield _with_db(SERVER_DSN, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
