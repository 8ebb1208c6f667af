"""`python -m worker run --processes N` as an operator runs it: a real supervisor process and real
worker processes on the test's Redis and queue, real health ports, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import eventually, make_settings
from worker.producer import JobHandle, Producer

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 4.0


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """A process on the test's Redis, queue and database, never the machine's defaults."""
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "QUEUE_NAME": settings.queue_name,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WORKER_SHUTDOWN_GRACE": str(GRACE_S),
        "WORKER_HTTP_PORT": "0",
        # One job at a time per process, so a handful of slow jobs must spread over both.
        "WORKER_MAX_JOBS": "1",
        **extra,
    }


def _free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on loopback now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65536:
            continue
        taken = False
        for port in range(base, base + count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
        if not taken:
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


class Group:
    """A running `run --processes N`: its process and what it logged (JSON lines)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    def events(self, event: str) -> list[dict[str, Any]]:
        lines = self.log.read_bytes().splitlines()
        found = []
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line being written
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
        return found

    def pids(self) -> dict[int, int]:
        """Child index -> pid of its latest start."""
        return {e["child"]: e["pid"] for e in self.events("worker process started")}

    async def exit_code(self, timeout: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)


@asynccontextmanager
async def _group(settings: Settings, tmp_path: Path, *args: str, **env: str) -> AsyncIterator[Group]:
    log = tmp_path / "group.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            *args,
            cwd=ROOT,
            env=_env(settings, **env),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    group = Group(proc, log)
    try:
        yield group
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), GRACE_S + 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _results(handles: list[JobHandle[Any]], timeout: float = 20) -> list[dict[str, Any]]:
    return [await h.result(timeout=timeout) for h in handles]


async def _reporting(producer: Producer, pid: int) -> bool:
    """Whether worker process `pid` has published its snapshot: it is up and claiming."""
    return any(orjson.loads(raw).get("pid") == pid for raw in await producer.backend.worker_snapshots())


async def _all_up(producer: Producer, group: Group, count: int = 2) -> None:
    """Until each of the group's `count` processes is up, so jobs can spread over all of them."""

    async def up() -> bool:
        pids = group.pids()
        if len(pids) < count:
            return False
        for pid in pids.values():
            if not await _reporting(producer, pid):
                return False
        return True

    await eventually(up, timeout=20, what=f"{count} worker processes up")


@pytest.fixture
def queue_settings(redis_server: RedisServer, database_url: str) -> Settings:
    return make_settings(redis_server.url, database_url=database_url)


async def test_two_processes_both_run_jobs_and_serve_health_on_their_own_ports(
    queue_settings: Settings, tmp_path: Path
) -> None:
    base = _free_ports(2)
    async with (
        _group(queue_settings, tmp_path, "--processes", "2", WORKER_HTTP_PORT=str(base)) as group,
        Producer(queue_settings) as producer,
    ):
        await _all_up(producer, group)
        handles = [await producer.enqueue_job("ping", {"sleep": 0.2}) for _ in range(8)]
        results = await _results(handles)
        assert {r["pid"] for r in results} == set(group.pids().values())
        assert len(group.pids()) == 2
        async with httpx.AsyncClient() as http:
            for port in (base, base + 1):
                assert (await http.get(f"http://127.0.0.1:{port}/healthz")).json() == {"status": "ok"}
                metrics = await http.get(f"http://127.0.0.1:{port}/metrics")
                assert metrics.status_code == 200
                assert "jobs" in metrics.text
        started = {e["child"]: e["http_port"] for e in group.events("worker process started")}
        assert started == {0: base, 1: base + 1}


async def test_stats_lists_each_process_of_the_group(queue_settings: Settings, tmp_path: Path) -> None:
    base = _free_ports(2)
    async with _group(queue_settings, tmp_path, "--processes", "2", WORKER_HTTP_PORT=str(base)) as group:

        def stats(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "worker", "stats", *args],
                cwd=ROOT,
                env=_env(queue_settings),
                capture_output=True,
                text=True,
                timeout=30,
            )

        async with Producer(queue_settings) as producer:
            await _all_up(producer, group)
        report = orjson.loads((await asyncio.to_thread(stats, "--json")).stdout)
        rows = sorted(report["workers"], key=lambda w: w["child"])
        assert [(w["pid"], w["child"], w["http_port"]) for w in rows] == [
            (group.pids()[0], 0, base),
            (group.pids()[1], 1, base + 1),
        ]
        assert {w["supervisor"] for w in rows} == {group.proc.pid}
        assert all(w["queues"] == ["critical", "default", "bulk", "ai"] for w in rows)
        table = (await asyncio.to_thread(stats)).stdout
        assert f"{group.proc.pid}/0" in table
        assert f"{group.proc.pid}/1" in table


async def test_sigterm_drains_running_jobs_and_every_process_exits(
    queue_settings: Settings, tmp_path: Path
) -> None:
    async with (
        _group(queue_settings, tmp_path, "--processes", "2") as group,
        Producer(queue_settings) as producer,
    ):
        await _all_up(producer, group)
        handles = [await producer.enqueue_job("ping", {"sleep": 1.0}) for _ in range(2)]

        async def both_running() -> bool:
            states = []
            for handle in handles:
                states.append((await producer.status(handle.job_id))["status"])
            return states == ["in_progress", "in_progress"]

        await eventually(both_running, what="a job running in each process")
        group.proc.send_signal(signal.SIGTERM)
        assert await group.exit_code(GRACE_S + 3) == 0
        # Both jobs finished during the drain rather than being cut off.
        assert {r["message"] for r in await _results(handles, timeout=1)} == {"pong"}
        stopped = group.events("worker process stopped")
        assert sorted(e["child"] for e in stopped) == [0, 1]
        assert all(e["exit_code"] == 0 for e in stopped)
        for pid in group.pids().values():  # no worker left behind
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_a_killed_process_is_restarted_and_jobs_keep_flowing(
    queue_settings: Settings, tmp_path: Path
) -> None:
    async with (
        _group(queue_settings, tmp_path, "--processes", "2") as group,
        Producer(queue_settings) as producer,
    ):
        await _all_up(producer, group)
        first = group.pids()
        os.kill(first[1], signal.SIGKILL)
        await eventually(lambda: group.pids()[1] != first[1], what="child 1 started again")
        died = group.events("worker process died; restarting it")
        assert died[0]["child"] == 1
        assert died[0]["pid"] == first[1]
        assert died[0]["signal"] == "SIGKILL"
        assert died[0]["restart_in_s"] == 1.0  # the first restart of a backoff that doubles
        await eventually(lambda: _reporting(producer, group.pids()[1]), what="child 1 working again")
        handles = [await producer.enqueue_job("ping", {"sleep": 0.2}) for _ in range(8)]
        pids = {r["pid"] for r in await _results(handles)}
        assert pids == {first[0], group.pids()[1]}
        assert group.pids()[0] == first[0]  # the other process went on undisturbed


async def test_burst_exits_once_every_process_is_done(queue_settings: Settings, tmp_path: Path) -> None:
    async with Producer(queue_settings) as producer:
        handles = [await producer.enqueue_job("ping", {"sleep": 0.05}) for _ in range(10)]
        async with _group(queue_settings, tmp_path, "--processes", "2", "--burst") as group:
            assert await group.exit_code(20) == 0
            results = await _results(handles, timeout=1)
        assert {r["pid"] for r in results} <= set(group.pids().values())
        assert group.events("worker process died; restarting it") == []
        assert len(group.events("worker process finished its burst")) == 2


@pytest.mark.parametrize("value", ["0", "abc", "-2"])
def test_an_invalid_process_count_is_refused_with_the_fix(queue_settings: Settings, value: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--processes", value],
        cwd=ROOT,
        env=_env(queue_settings),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert f"argument --processes: {value!r} is not a number of worker processes" in run.stderr
    assert "use a whole number from 1" in run.stderr
    assert "or auto for one per core" in run.stderr


def test_a_taken_health_port_stops_the_group_before_it_starts(queue_settings: Settings) -> None:
    base = _free_ports(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 1))
        holder.listen()
        run = subprocess.run(
            [sys.executable, "-m", "worker", "run", "--processes", "2"],
            cwd=ROOT,
            env=_env(queue_settings, WORKER_HTTP_PORT=str(base)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert run.returncode == 2
    assert f"WORKER_HTTP_PORT: port {base + 1} (health of worker process 1" in run.stderr
    assert "is in use" in run.stderr


async def test_a_lone_worker_on_a_taken_port_runs_and_says_how_to_fix_it(
    queue_settings: Settings, tmp_path: Path
) -> None:
    base = _free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base))
        holder.listen()
        async with (
            _group(queue_settings, tmp_path, WORKER_HTTP_PORT=str(base)) as lone,
            Producer(queue_settings) as producer,
        ):
            result = await (await producer.enqueue_job("ping")).result(timeout=20)
            assert result["pid"] == lone.proc.pid  # one process: the worker itself, no supervisor
            (failed,) = lone.events(
                "health server not started; this worker runs without /healthz, /readyz and /metrics"
            )
            assert failed["port"] == base
            assert failed["error"] == f"port {base} is in use"
            assert "WORKER_HTTP_PORT" in failed["fix"]
            assert "--processes" in failed["fix"]
