"""Tests for devservices: throwaway Redis/Postgres servers, the fault proxy and the `env` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import redis.exceptions

from devservices._process import pick_port, process_start_time
from devservices.binaries import PG_BINARIES, find_postgres_bindir, find_redis_server
from devservices.postgres import PostgresServer, pg_probe
from devservices.proxy import TcpProxy
from devservices.redis import RedisServer, redis_ping

REPO_ROOT = Path(__file__).resolve().parents[1]


def raw_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one RESP command over a plain socket and return the first reply line."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\r\n", 1)[0]


def pid_alive(pid: int) -> bool:
    return process_start_time(pid) is not None  # zombies count as dead


def process_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line for line in fh if line.startswith("Uid:")).split()[1])


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    """A tiny asyncio echo server standing in for the proxied target."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


# -- binaries ---------------------------------------------------------------------------


def test_binaries_are_found() -> None:
    assert os.access(find_redis_server(), os.X_OK)
    bindir = find_postgres_bindir()
    for name in PG_BINARIES:
        assert os.access(os.path.join(bindir, name), os.X_OK)


# -- Redis --------------------------------------------------------------------------------


def test_redis_start_kill_restart_keeps_port_and_loses_data(redis_srv: RedisServer) -> None:
    port = redis_srv.port
    assert redis_srv.url == f"redis://127.0.0.1:{port}/0"
    assert raw_command(port, "PING") == b"+PONG"
    assert raw_command(port, "SET", "k", "v") == b"+OK"

    redis_srv.kill()
    assert not redis_srv.running
    with pytest.raises(ConnectionRefusedError):
        raw_command(port, "PING")

    redis_srv.restart()
    assert redis_srv.port == port
    assert raw_command(port, "PING") == b"+PONG"
    assert raw_command(port, "GET", "k") == b"$-1"  # no persistence by default

    redis_srv.stop()
    assert not redis_ping("127.0.0.1", port)


def test_redis_password_and_extra_args() -> None:
    with RedisServer(password="s3 cret", extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        assert server.url == f"redis://:s3%20cret@127.0.0.1:{server.port}/0"
        assert raw_command(server.port, "PING").startswith(b"-NOAUTH")
        assert redis_ping("127.0.0.1", server.port, password="s3 cret")
        assert not redis_ping("127.0.0.1", server.port, password="wrong")
        reply = raw_command(server.port, "AUTH", "s3 cret")
        assert reply == b"+OK"
    assert not server.running


def test_start_failure_raises_with_log_tail(redis_srv: RedisServer) -> None:
    bad = RedisServer(extra_args=["--no-such-option", "x"])
    with pytest.raises(RuntimeError, match="FATAL CONFIG"):
        bad.start()
    bad.close()
    taken = RedisServer(port=redis_srv.port)  # a fixed port is not silently swapped for another
    with pytest.raises(RuntimeError, match=f"failed to start on 127.0.0.1:{redis_srv.port}"):
        taken.start()
    taken.close()
    assert redis_srv.ping()


def test_redis_persistent_survives_kill() -> None:
    with RedisServer(persistent=True, extra_args=["--appendfsync", "always"]) as server:
        assert raw_command(server.port, "SET", "k", "kept") == b"+OK"
        server.kill()
        server.restart()
        assert raw_command(server.port, "GET", "k") == b"$4"


def test_no_orphans_when_the_owner_dies(tmp_path: Path) -> None:
    """A process that forgets to stop its server still leaves none behind (atexit / PDEATHSIG)."""
    for ending in ("sys.exit(0)", "os._exit(0)"):
        script = textwrap.dedent(f"""
            import os, sys
            from devservices.redis import RedisServer
            s = RedisServer().start()
            print(s.pid, s.base_dir, flush=True)
            {ending}
        """)
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
        pid, base_dir = int(out[0]), out[1]
        assert wait_dead(pid), f"redis-server {pid} outlived its owner ({ending})"
        if ending == "sys.exit(0)":
            assert not os.path.exists(base_dir)
        else:  # os._exit skips atexit, so the temp dir is left behind: tidy it here
            shutil.rmtree(base_dir, ignore_errors=True)


# -- Postgres -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_postgres_select_kill_restart() -> None:
    started = time.monotonic()
    with PostgresServer() as server:
        assert time.monotonic() - started < 10
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("show fsync") == "off"
            await conn.execute("create table t (x int); insert into t values (42)")
        finally:
            await conn.close()

        if os.geteuid() == 0:  # initdb/postgres refuse root: must run as another account
            assert server.pid is not None
            assert process_uid(server.pid) != 0

        server.kill()
        assert pg_probe("127.0.0.1", server.port) == "down"
        server.restart()  # crash recovery; committed data is still there
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("select x from t") == 42
        finally:
            await conn.close()
    assert pg_probe("127.0.0.1", server.port) == "down"


# -- TcpProxy -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_proxy_forwards_blackholes_restores_and_cuts(echo_port: int) -> None:
    async with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert proxy.url_for("redis://:pw@localhost:6379/3") == f"redis://:pw@127.0.0.1:{proxy.port}/3"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 2) == b"hello"

        proxy.blackhole()
        # The existing connection stays open but nothing comes back.
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)
        # New connections are still accepted, and are just as silent.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w2.write(b"anyone?")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r2.read(100), 0.3)
        assert proxy.connections == 2

        proxy.restore()
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w3.write(b"back")
        assert await asyncio.wait_for(r3.readexactly(4), 2) == b"back"

        proxy.cut()
        for r in (reader, r2, r3):
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(r.readexactly(1), 2)
        for w in (writer, w2, w3):
            w.close()
        assert proxy.accepted == 3
    assert proxy.connections == 0


@pytest.mark.asyncio
async def test_proxy_redis_client_times_out_then_recovers(redis_srv: RedisServer) -> None:
    async with TcpProxy("127.0.0.1", redis_srv.port) as proxy:
        client = aioredis.Redis.from_url(proxy.url_for(redis_srv.url), socket_timeout=0.3)
        try:
            assert await client.ping()
            proxy.blackhole()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.ping()
            proxy.restore()
            assert await client.ping()  # the pool reconnects through the restored proxy
        finally:
            await client.aclose()


# -- CLI ------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devservices", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(overrides)
    return env


def test_cli_env_starts_reuses_and_stops_throwaway_redis(tmp_path: Path) -> None:
    unused = pick_port()
    # DATABASE_URL is set (even empty counts), so the CLI must leave it alone.
    env = cli_env(DATABASE_URL="")
    args = ("env", "--default-redis-url", f"redis://127.0.0.1:{unused}/0")
    first = run_cli(*args, cwd=tmp_path, env=env)
    try:
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert len(lines) == 1, first.stdout
        assert lines[0].startswith("export REDIS_URL=redis://127.0.0.1:"), first.stdout
        assert "started a throwaway redis-server" in first.stderr
        assert "DATABASE_URL is already set" in first.stderr
        url = lines[0].split("=", 1)[1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert redis_ping("127.0.0.1", port)  # outlived the CLI process
        state = json.loads((tmp_path / ".devservices" / "redis.json").read_text())
        assert state["port"] == port

        second = run_cli(*args, cwd=tmp_path, env=env)
        assert second.stdout == first.stdout
        assert "reusing" in second.stderr
    finally:
        stopped = run_cli("stop", cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_dead(state["pid"])
    assert not redis_ping("127.0.0.1", port)
    assert not (tmp_path / ".devservices" / "redis.json").exists()
    assert not (tmp_path / ".devservices" / "redis").exists()


@pytest.mark.asyncio
async def test_cli_env_starts_throwaway_postgres_and_uses_live_default(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    state_dir = tmp_path / "state"
    args = (
        "env",
        "--state-dir",
        str(state_dir),
        "--default-redis-url",
        redis_srv.url,  # answers, so it is used as is
        "--default-database-url",
        f"postgresql://postgres@127.0.0.1:{pick_port()}/maxbooster_jobs",
    )
    result = run_cli(*args, cwd=tmp_path, env=cli_env())
    try:
        assert result.returncode == 0, result.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
        assert exports["REDIS_URL"] == redis_srv.url
        assert f"Redis: using {redis_srv.url}" in result.stderr
        assert exports["DATABASE_URL"].endswith("/maxbooster_jobs")  # the runner's own database
        conn = await asyncpg.connect(exports["DATABASE_URL"])
        try:
            assert await conn.fetchval("select current_database()") == "maxbooster_jobs"
        finally:
            await conn.close()
        note = run_cli("note", "--state-dir", str(state_dir), cwd=tmp_path, env=cli_env())
        assert "keeps running for the next `make run` / `make test`" in note.stderr
        assert "make stop-services" in note.stderr
    finally:
        stopped = run_cli("stop", "--state-dir", str(state_dir), cwd=tmp_path, env=cli_env())
    assert stopped.returncode == 0, stopped.stderr
    assert "Postgres: throwaway server" in stopped.stderr
    again = run_cli("stop", "--state-dir", str(state_dir), cwd=tmp_path, env=cli_env())
    assert "nothing to stop" in again.stderr
    assert run_cli("note", "--state-dir", str(state_dir), cwd=tmp_path, env=cli_env()).stderr == ""
    assert redis_srv.ping()  # `stop` never touches servers it did not start
    assert not (state_dir / "postgres.json").exists()


def test_cli_stop_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    state_dir = tmp_path / ".devservices"
    state_dir.mkdir()
    with subprocess.Popen(["sleep", "30"]) as stranger:
        try:
            # A stale record whose pid now belongs to someone else (start time differs).
            record = {"pid": stranger.pid, "start_time": 1, "url": "redis://127.0.0.1:1/0"}
            (state_dir / "redis.json").write_text(json.dumps(record))
            stopped = run_cli("stop", cwd=tmp_path, env=cli_env())
            assert stopped.returncode == 0, stopped.stderr
            assert "was not running" in stopped.stderr
            assert stranger.poll() is None
            assert not (state_dir / "redis.json").exists()
        finally:
            stranger.kill()


@pytest.mark.asyncio
async def test_cli_env_creates_the_runners_database_on_a_server_that_answers(tmp_path: Path) -> None:
    with PostgresServer() as server:
        default = server.url.rsplit("/", 1)[0] + "/maxbooster_jobs"
        env = cli_env(REDIS_URL="")
        result = run_cli("env", "--state-dir", str(tmp_path / "s"), "--default-database-url", default,
                         cwd=tmp_path, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"export DATABASE_URL={default}"
        assert "created the database 'maxbooster_jobs'" in result.stderr
        conn = await asyncpg.connect(default)
        await conn.close()
        again = run_cli("env", "--state-dir", str(tmp_path / "s"), "--default-database-url", default,
                        cwd=tmp_path, env=env)  # fmt: skip
        assert f"Postgres: using {default}\n" in again.stderr  # exists now: nothing created


def test_stop_and_clean_work_without_an_install(tmp_path: Path) -> None:
    # The system interpreter, not the virtual environment: `make stop-services` and `make clean`
    # must work before (or after a failed) install.
    system_python = shutil.which("python3") or sys.executable
    env = cli_env()
    stop = subprocess.run([system_python, "-S", "-m", "devservices", "stop"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert "nothing to stop" in stop.stderr
    (tmp_path / ".devservices").mkdir()
    clean = subprocess.run([system_python, "-S", "-m", "devservices", "clean"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    assert not (tmp_path / ".devservices").exists()
