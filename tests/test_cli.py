"""`python -m worker ...` as an operator runs it: real processes, real signals, JSON output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import orjson

from devservices.redis import RedisServer
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[1]


def _env(redis_url: str, database_url: str, queue: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        QUEUE_NAME=queue,
        LOG_FORMAT="json",
        WORKER_SHUTDOWN_GRACE="10",
        WORKER_HTTP_PORT="0",
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def _json(stdout: str) -> dict[str, object]:
    value = orjson.loads(stdout.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


async def test_enqueue_status_and_graceful_sigterm(redis_server: RedisServer, database_url: str) -> None:
    env = _env(redis_server.url, database_url, f"cli:{uuid.uuid4().hex[:8]}")
    worker = subprocess.Popen(  # noqa: ASYNC220 - a worker process to signal, not awaited
        [sys.executable, "-m", "worker", "run"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        queued = _cli(
            env, "enqueue", "ping", "--args", '{"message": "slow", "sleep": 1.5}', "--job-id", "cli-1"
        )
        assert queued.returncode == 0, queued.stderr
        assert _json(queued.stdout) == {"job_id": "cli-1", "job": "ping", "mode": "queued"}

        await eventually(lambda: _json(_cli(env, "status", "cli-1").stdout)["status"] == "in_progress")
        worker.send_signal(signal.SIGTERM)  # mid-job: the job must still finish
        _, stderr = worker.communicate(timeout=20)
        assert worker.returncode == 0, stderr
    finally:
        if worker.poll() is None:
            worker.kill()

    status = _json(_cli(env, "status", "cli-1").stdout)
    assert status["status"] == "complete"
    assert status["result"]["message"] == "slow"  # type: ignore[index]
    events = [orjson.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "shutdown requested, finishing running jobs" in events
    assert events[-1] == "worker stopped"

    again = _cli(env, "enqueue", "ping", "--args", '{"message": "x"}', "--job-id", "cli-1")
    assert _json(again.stdout)["duplicate"] is True


def test_enqueue_inline_and_errors(redis_server: RedisServer, database_url: str) -> None:
    env = _env(redis_server.url, database_url, f"cli:{uuid.uuid4().hex[:8]}")
    inline = _cli(env, "enqueue", "ping", "--args", '{"message": "here"}', "--inline")
    assert inline.returncode == 0, inline.stderr
    out = _json(inline.stdout)
    assert out["mode"] == "inline"
    assert out["result"]["message"] == "here"  # type: ignore[index]

    bad = _cli(env, "enqueue", "ping", "--args", '{"message": 3}')
    assert bad.returncode == 2
    assert "ping: argument 'message': Input should be a valid string" in bad.stderr

    unknown = _cli(env, "enqueue", "pong")
    assert unknown.returncode == 2
    assert "unknown job 'pong'" in unknown.stderr

    down = _cli({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "enqueue", "ping", "--args", "{}")
    assert down.returncode == 0
    assert _json(down.stdout)["mode"] == "inline"

    config = _cli({**env, "REDIS_URL": "http://nope"}, "jobs")
    assert config.returncode == 2
    assert "REDIS_URL: scheme 'http' is not supported" in config.stderr

    missing = _cli(env, "status", "no-such-job")
    assert missing.returncode == 1
    assert _json(missing.stdout)["status"] == "not_found"


def test_bad_input_is_refused_before_connecting_in_one_line() -> None:
    # Redis and Postgres unreachable: validation must not need them, nor log anything first.
    env = _env("redis://127.0.0.1:1/0", "postgresql://postgres@127.0.0.1:1/x", "cli:bad")
    cases = [
        (("enqueue", "pong"), "unknown job 'pong'; registered jobs: "),
        (("enqueue", "ping", "--args", "{bad"), "--args is not valid JSON"),
        (
            ("enqueue", "ping", "--args", '{"mesage": "x"}'),
            "unknown argument 'mesage' (it takes message, sleep)",
        ),
        (
            ("enqueue", "ping", "--arg", "{}"),
            "unknown argument --arg {}; it takes --args, --job-id, --inline, --wait",
        ),
    ]
    for args, expected in cases:
        result = _cli(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if not line.startswith(("usage:", " "))]
        assert len(errors) == 1, (args, result.stderr)  # the error alone: no log line before it
        assert result.stdout == ""


async def test_wait_that_times_out_says_whether_a_worker_is_alive(
    redis_server: RedisServer, database_url: str
) -> None:
    env = _env(redis_server.url, database_url, f"cli:{uuid.uuid4().hex[:8]}")
    alone = _cli(env, "enqueue", "ping", "--args", '{"message": "x"}', "--wait", "0.3")
    assert alone.returncode == 1
    message = _json(alone.stdout)["error"]["message"]  # type: ignore[index]
    assert "the job is queued" in message
    assert "no worker has reported on queue" in message
    assert "python -m worker run" in message

    worker = subprocess.Popen(  # noqa: ASYNC220 - a worker process to stop, not awaited
        [sys.executable, "-m", "worker", "run"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    try:
        slow = '{"message": "slow", "sleep": 3}'
        await eventually(
            lambda: "alive" in _cli(env, "enqueue", "ping", "--args", slow, "--wait", "0.5").stdout
        )
        busy = _cli(env, "enqueue", "ping", "--args", slow, "--wait", "0.5")
        message = _json(busy.stdout)["error"]["message"]  # type: ignore[index]
        assert "1 worker(s) of queue" in message
        assert "alive" in message
    finally:
        worker.terminate()
        worker.wait(20)


async def test_the_worker_runs_on_uvloop_when_asked(redis_server: RedisServer, database_url: str) -> None:
    env = _env(redis_server.url, database_url, f"cli:{uuid.uuid4().hex[:8]}")
    queued = _cli(env, "enqueue", "ping", "--args", '{"message": "on uvloop"}', "--job-id", "uv-1")
    assert queued.returncode == 0, queued.stderr
    for loop in ("uvloop", "asyncio"):
        worker = _cli({**env, "WORKER_EVENT_LOOP": loop}, "run", "--burst")
        assert worker.returncode == 0, worker.stderr
        lines = [orjson.loads(line) for line in worker.stderr.splitlines() if line.startswith("{")]
        assert [line["event_loop"] for line in lines if line["event"] == "worker started"] == [loop]
    status = _json(_cli(env, "status", "uv-1").stdout)
    assert status["status"] == "complete"
    assert status["result"]["message"] == "on uvloop"  # type: ignore[index]

    bad = _cli({**env, "WORKER_EVENT_LOOP": "trio"}, "run", "--burst")
    assert bad.returncode == 2
    assert "WORKER_EVENT_LOOP" in bad.stderr
    assert "trio" in bad.stderr
    assert "use asyncio (the default) or uvloop" in bad.stderr
