"""What a newcomer meets in the first hour: `make run`'s demonstration and `make test` with a
broken configuration fail once, in one line, with the fix; Ctrl-C stops the demo cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devservices.redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = "postgresql://postgres@127.0.0.1:1/maxbooster_jobs"


def _demo_env(redis_url: str, database_url: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "EMAIL_FILE_DIR": ""}


def _demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_with_postgres_nowhere_fails_once_with_the_fix() -> None:
    result = _demo(_demo_env("", NOWHERE))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert "DATABASE_URL: cannot connect to Postgres at 127.0.0.1:1" in result.stderr
    assert "point DATABASE_URL at a running server" in result.stderr
    assert "Started a throwaway Redis" not in result.stdout  # nothing started


def test_demo_with_a_wrong_redis_password_says_so(database_url: str) -> None:
    with RedisServer(password="right-password") as server:
        wrong = server.url.replace("right-password", "wrong-password")
        result = _demo(_demo_env(wrong, database_url))
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert "REDIS_URL" in error[0]
    assert "refused the credentials" in error[0]
    assert "check the user and password in REDIS_URL" in error[0]
    assert "wrong-password" not in result.stderr  # masked


def test_ctrl_c_during_the_demo_stops_it_cleanly(database_url: str, tmp_path: Path) -> None:
    env = {**_demo_env("", database_url), "EMAIL_FILE_DIR": str(tmp_path)}
    seen = []
    with subprocess.Popen(
        [sys.executable, "-m", "worker", "demo"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    ) as demo:  # fmt: skip
        assert demo.stdout is not None
        try:
            for line in demo.stdout:
                seen.append(line)
                if line.startswith("=== 2."):  # Redis stopped, jobs running inline
                    os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's group
                    break
            seen.append(demo.stdout.read())
            assert demo.wait(30) == 130
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
    output = "".join(seen)
    assert "Traceback" not in output
    assert "Demo interrupted (Ctrl-C): its worker and throwaway Redis are stopped" in output
    assert "worker stopped" in output  # the demo's worker shut down, not killed


def test_the_test_suite_stops_at_once_when_postgres_is_nowhere() -> None:
    env = {**os.environ, "DATABASE_URL": NOWHERE}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_settings.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert output.splitlines()[0].startswith("ERROR: DATABASE_URL: cannot connect to Postgres at 127.0.0.1:1")
    assert len(output.splitlines()) == 1, output
