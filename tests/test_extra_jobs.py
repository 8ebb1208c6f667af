"""Jobs of your own without editing ours: modules named in JOB_MODULES or `--jobs` join the
registry of the worker, the producer, the CLI and the HTTP service (tests/extra/*.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from devservices._process import pick_port
from devservices.redis import RedisServer
from settings import Settings, SettingsError, load_settings
from tests.conftest import make_settings
from tests.http_fixtures import start_serve
from worker import Producer

ROOT = Path(__file__).resolve().parents[1]
GREETINGS = "tests.extra.greetings"
TOKEN = "extra-jobs-token-0123456789abcdef"


def _env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "QUEUE_NAME": f"extra:{uuid.uuid4().hex[:8]}",
        "LOG_FORMAT": "json",
        "WORKER_HTTP_PORT": "0",
        "WORKER_SHUTDOWN_GRACE": "5",
    }
    env.pop("JOB_MODULES", None)
    return {**env, **extra}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def _last_json(stdout: str) -> dict[str, object]:
    value = orjson.loads(stdout.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


def test_a_worker_runs_jobs_from_an_extra_module(redis_server: RedisServer, database_url: str) -> None:
    env = _env(redis_server.url, database_url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--jobs", GREETINGS], cwd=ROOT, env=env,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Enqueued by the CLI with the flag, and with the setting: the same jobs either way.
        greeted = _cli(
            env, "enqueue", "greet", "--jobs", GREETINGS, "--args", '{"name": "Ada"}', "--wait", "30"
        )
        assert greeted.returncode == 0, greeted.stderr
        out = _last_json(greeted.stdout)
        assert (out["job"], out["mode"]) == ("greet", "queued")
        assert out["result"] == {"greeting": "hello, Ada", "mode": "queued"}

        with_setting = {**env, "JOB_MODULES": GREETINGS}
        shouted = _cli(with_setting, "enqueue", "shout", "--args", '{"name": "bo"}', "--wait", "30")
        assert shouted.returncode == 0, shouted.stderr
        # From the `bulk` queue its definition names, which the worker consumes by default.
        assert _last_json(shouted.stdout)["result"] == "HELLO, BO"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr[-3000:]


def test_the_jobs_listing_shows_extra_jobs(redis_server: RedisServer, database_url: str) -> None:
    env = _env(redis_server.url, database_url)
    listed = _cli(env, "jobs", "--jobs", GREETINGS)
    assert listed.returncode == 0, listed.stderr
    rows = {row["job"]: row for row in map(orjson.loads, listed.stdout.splitlines())}
    assert rows["greet"]["args"] == ["name"]
    assert rows["greet"]["description"] == "Greet someone, saying how the job ran."
    assert rows["shout"]["timeout_s"] is None
    assert "ping" in rows  # ours are still there
    plain = _cli(env, "jobs")
    assert "greet" not in {orjson.loads(line)["job"] for line in plain.stdout.splitlines()}


async def test_a_producer_reads_job_modules_from_its_settings() -> None:
    settings = make_settings("", job_modules=GREETINGS)  # no Redis: the job runs inline, here
    async with Producer(settings) as producer:
        handle = await producer.enqueue_job("greet", {"name": "Lin"})
        assert await handle.result(timeout=10) == {"greeting": "hello, Lin", "mode": "inline"}


def test_serve_takes_jobs_from_an_extra_module(redis_server: RedisServer, database_url: str) -> None:
    port = pick_port()
    env = _env(redis_server.url, database_url, API_PORT=str(port), API_TOKENS=TOKEN, JOB_MODULES=GREETINGS)
    proc = start_serve(env, port, str(ROOT))
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, timeout=5, headers=auth) as client:
            queued = client.post("/v1/jobs/greet", json={"args": {"name": "Ada"}})
            assert (queued.status_code, queued.json()["mode"]) == (202, "queued")
            refused = client.post("/v1/jobs/greet", json={"args": {"nom": "Ada"}})
            assert refused.status_code == 422
            assert {"greet", "shout", "ping"} <= set(client.get("/v1/jobs").json()["jobs"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (
            "tests.extra.nope",
            "--jobs: no module named 'tests.extra.nope'; check the spelling, and run from the folder "
            "that holds it or add that folder to PYTHONPATH",
        ),
        (
            "tests.extra.clashing",
            "--jobs: job 'ping' (tests.extra.clashing._ping) has the name of the registered job 'ping' "
            "(jobs.ops.ping); give it another with define(..., name='...')",
        ),
        (
            "tests.extra.empty",
            "--jobs: module 'tests.extra.empty' defines no jobs; bind each at module level "
            "(my_job = define(my_job_func)), or remove it from --jobs",
        ),
        ("tests.extra-jobs", "--jobs: 'tests.extra-jobs' is not a module name"),
    ],
)
def test_a_bad_extra_module_is_refused_naming_it_and_the_fix(
    redis_server: RedisServer, database_url: str, flag: str, expected: str
) -> None:
    env = _env(redis_server.url, database_url)
    for command in (["run"], ["enqueue", "ping"], ["jobs"], ["serve"]):
        done = _cli(env, *command, "--jobs", flag)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert expected in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr


def test_the_setting_is_named_when_the_modules_came_from_it(
    redis_server: RedisServer, database_url: str
) -> None:
    env = _env(redis_server.url, database_url, JOB_MODULES="tests.extra.nope")
    done = _cli(env, "run")
    assert done.returncode == 2
    assert "JOB_MODULES: no module named 'tests.extra.nope'" in done.stderr


def test_the_setting_lists_module_names() -> None:
    settings: Settings = load_settings(job_modules=" tests.extra.greetings , myapp.jobs ")
    assert settings.job_module_names == ("tests.extra.greetings", "myapp.jobs")
    with pytest.raises(SettingsError, match="a module is listed twice"):
        load_settings(job_modules="a.b,a.b")
