"""`python -m worker serve` as ops run it: a process of its own that refuses unsafe settings, logs
JSON, never logs a token, and stops cleanly on SIGTERM."""

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

from core.registry import Registry
from devservices._process import pick_port
from devservices.redis import RedisServer
from settings import SettingsError, load_settings, parse_api_tokens
from tests.http_fixtures import start_serve
from tests.sample_jobs import TEST_REGISTRY
from worker.ops.http import create_app, startup_problem

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "serve-Secret-Token-5521-abcdef"
SCOPED = "serve-Scoped-Token-5522-abcdef"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "LOG_FORMAT": "json", "WORKER_HTTP_PORT": "0", **extra}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_serve_runs_logs_no_token_and_stops_on_sigterm(redis_server: RedisServer, database_url: str) -> None:
    port = pick_port()
    env = _env(
        REDIS_URL=redis_server.url,
        DATABASE_URL=database_url,
        QUEUE_NAME=f"serve:{uuid.uuid4().hex[:6]}",
        API_PORT=str(port),
        API_TOKENS=f"{TOKEN} {SCOPED}:ping",
        LOG_LEVEL="DEBUG",
    )
    proc = start_serve(env, port, str(ROOT))
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=5) as client:
            ok = client.post(
                "/v1/jobs/ping",
                json={"args": {"message": "hi"}},
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            assert (ok.status_code, ok.json()["mode"]) == (202, "queued")
            # Tokens in every place a careless service might echo or log them.
            assert (
                client.post(
                    "/v1/jobs/ping", json={}, headers={"authorization": f"Bearer {TOKEN}x"}
                ).status_code
                == 401
            )
            assert (
                client.post(
                    "/v1/jobs/send_email", json={}, headers={"authorization": f"Bearer {SCOPED}"}
                ).status_code
                == 403
            )
            assert (
                client.post(
                    "/v1/jobs/ping", content=b"{", headers={"authorization": f"Bearer {TOKEN}"}
                ).status_code
                == 400
            )
            assert (
                client.get(f"/v1/jobs/{TOKEN}", headers={"authorization": f"Bearer {TOKEN}"}).status_code
                == 404
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    everything = out + err
    assert TOKEN not in everything
    assert SCOPED not in everything
    events = [orjson.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    assert any(e["event"] == "API ready" and e["auth"] == "2 bearer tokens" for e in events)
    assert any(e["event"].startswith("Uvicorn running on") for e in events)


def test_serve_refuses_to_start_without_tokens(database_url: str) -> None:
    refused = _run(_env(DATABASE_URL=database_url, REDIS_URL="", API_TOKENS=""), "serve")
    assert refused.returncode == 2
    assert "API_TOKENS: not set" in refused.stderr
    assert "secrets.token_urlsafe" in refused.stderr
    exposed = _run(_env(REDIS_URL="", API_DEV_NO_AUTH="true", API_HOST="0.0.0.0"), "serve")
    assert exposed.returncode == 2
    assert "API_DEV_NO_AUTH: serving without auth is only allowed on a loopback address" in exposed.stderr


def test_dev_flag_allows_no_auth_only_on_loopback() -> None:
    base = {"_env_file": None, "redis_url": ""}
    assert startup_problem(load_settings(**base, api_tokens=TOKEN)) is None
    assert startup_problem(load_settings(**base, api_dev_no_auth=True)) is None
    assert startup_problem(load_settings(**base, api_dev_no_auth=True, api_host="::1")) is None
    assert startup_problem(load_settings(**base)) is not None
    with pytest.raises(SettingsError, match="only allowed on a loopback address"):
        load_settings(**base, api_dev_no_auth=True, api_host="10.0.0.5")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("short", "token 1 is too short"),
        (f"{TOKEN},{SCOPED}", "has a ',' but no ':'; use spaces between tokens"),
        (f"{TOKEN}:", "token 1 has no valid job names after ':'"),
        (f"{TOKEN} {TOKEN}", "a token is listed twice"),
    ],
)
def test_bad_api_tokens_are_refused_at_start_without_showing_them(raw: str, problem: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, api_tokens=raw)
    assert problem in str(refused.value)
    assert TOKEN not in str(refused.value)
    assert "<redacted>" in str(refused.value)


def test_token_entries_and_scopes() -> None:
    assert parse_api_tokens(f"{TOKEN}\n  {SCOPED}:ping,send_email") == [
        (TOKEN, None),
        (SCOPED, frozenset({"ping", "send_email"})),
    ]
    settings = load_settings(_env_file=None, redis_url="", api_tokens=f"{TOKEN}:nope")
    with pytest.raises(ValueError, match=r"token 1 names jobs that are not registered \('nope'\)"):
        create_app(settings, registry=TEST_REGISTRY)
    assert create_app(load_settings(_env_file=None, api_tokens=f"{TOKEN}:events"), registry=Registry([]))
