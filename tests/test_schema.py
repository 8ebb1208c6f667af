"""The runner keeps its tables in a schema of its own: nothing in `public` (where the web app's
ORM pushes its schema), older installations moved there with their rows, and the web app's own
connection (the outbox) still reaches the spool."""

from __future__ import annotations

import asyncpg

from devservices.redis import RedisServer
from tests.conftest import eventually, make_settings, pg_connect, start_worker
from tests.sample_jobs import TEST_REGISTRY
from worker.ledger.migrate import (
    LEGACY_TABLES,
    MIGRATIONS_TABLE,
    apply_migrations,
    available_migrations,
    has_legacy_layout,
)
from worker.ops.doctor import check_postgres
from worker.producer import Producer

VERSIONS = [m.version for m in available_migrations()]
# The versions an installation from before the runner's own schema had applied, in public.
LEGACY_VERSIONS = [v for v in VERSIONS if v < "0007"]


async def _tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r["tablename"] for r in rows}


async def _install_legacy_layout(conn: asyncpg.Connection) -> None:
    """What versions 0001-0006 left behind: every table in public, tracked in schema_migrations."""
    await conn.execute("SET search_path TO public")
    await conn.execute(
        "CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
    )
    for migration in available_migrations():
        if migration.version in LEGACY_VERSIONS[1:]:
            await conn.execute(migration.sql)
    await conn.executemany(
        "INSERT INTO schema_migrations (version) VALUES ($1)", [(v,) for v in LEGACY_VERSIONS]
    )
    # Rows of a running installation, and a table of the web app's that must stay where it is.
    await conn.execute(
        "INSERT INTO analytics_contacts (artist_id, email, name) VALUES ('a1', 'zoe@example.com', 'Zoë')"
    )
    await conn.execute(
        "INSERT INTO dead_letters (job_id, job_name, payload, error, tries, mode)"
        " VALUES ('dead-1', 'record', '{}', '{\"type\": \"X\"}', 1, 'queued')"
    )
    await conn.execute("CREATE TABLE users (id text PRIMARY KEY)")


async def test_a_fresh_database_gets_no_table_in_public(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await apply_migrations(conn) == VERSIONS
        assert await _tables(conn, "public") == set()
        runner_tables = await _tables(conn, "jobrunner")
        assert set(LEGACY_TABLES) | {MIGRATIONS_TABLE, "analytics_tracks"} == runner_tables
    finally:
        await conn.close()


async def test_an_older_installation_is_moved_out_of_public_with_its_rows(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        await _install_legacy_layout(conn)
        assert await has_legacy_layout(conn)
        assert await apply_migrations(conn) == ["0007_own_schema_and_track_titles"]
        assert await _tables(conn, "public") == {"users"}  # the web app's table stays
        assert not await has_legacy_layout(conn)
    finally:
        await conn.close()
    runner = await pg_connect(fresh_database)
    try:
        assert await runner.fetchval("SELECT name FROM analytics_contacts WHERE artist_id = 'a1'") == "Zoë"
        assert await runner.fetchval("SELECT job_name FROM dead_letters WHERE job_id = 'dead-1'") == "record"
        applied = [
            r["version"] for r in await runner.fetch("SELECT version FROM job_runner_migrations ORDER BY 1")
        ]
        assert applied == VERSIONS
    finally:
        await runner.close()


async def test_another_tools_schema_migrations_is_left_alone(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute("CREATE TABLE public.schema_migrations (version bigint PRIMARY KEY)")
        await conn.execute("INSERT INTO public.schema_migrations VALUES (20240101)")
        assert not await has_legacy_layout(conn)
        assert await apply_migrations(conn) == VERSIONS
        assert await _tables(conn, "public") == {"schema_migrations"}
    finally:
        await conn.close()


async def test_doctor_points_an_older_installation_at_migrate(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        await _install_legacy_layout(conn)
    finally:
        await conn.close()
    check = await check_postgres(make_settings("redis://localhost:1/0", database_url=fresh_database))
    assert check.state == "degraded"
    assert "still in public" in check.detail
    assert "python -m worker migrate" in check.fix


async def test_a_schema_of_your_choice_and_the_outbox_on_the_web_apps_connection(
    redis_server: RedisServer, fresh_database: str
) -> None:
    settings = make_settings(redis_server.url, database_url=fresh_database, database_schema="jobs_custom")
    conn = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(conn, schema="jobs_custom")
    finally:
        await conn.close()
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            web_app = await asyncpg.connect(fresh_database)  # search path: the web app's public
            try:
                async with web_app.transaction():
                    await web_app.execute("CREATE TABLE orders (id int)")
                    handle = await producer.enqueue_in_transaction(web_app, "record", {"key": "outbox"})
            finally:
                await web_app.close()
            assert (await handle.result(timeout=10))["key"] == "outbox"
            failed = await producer.enqueue_job("refuse", {"reason": "no"})

            async def dead() -> bool:
                return bool((await producer.status(failed.job_id))["status"] == "dead")

            await eventually(dead, what="the failed job in the custom schema's dead letters")
    finally:
        await worker.stop()
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await _tables(conn, "public") == {"orders"}
        assert "dead_letters" in await _tables(conn, "jobs_custom")
        assert await _tables(conn, "jobrunner") == set()
    finally:
        await conn.close()
