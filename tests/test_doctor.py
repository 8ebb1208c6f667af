"""`python -m worker doctor` against real servers in each state an operator meets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from pydantic import SecretStr

from devservices._process import pick_port
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import make_settings
from worker.ops.doctor import diagnose

ROOT = Path(__file__).resolve().parents[1]


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@pytest.fixture
def smtp_url() -> Iterator[str]:
    """An SMTP server that accepts user `mailer` with password `right`."""

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if data.login == b"mailer" and data.password == b"right":
            return AuthResult(success=True)
        # An explicit reply: without one aiosmtpd 1.4 leaves a refused client waiting.
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Authentication credentials invalid"
        )

    port = pick_port()
    controller = Controller(
        _Sink(), hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    yield f"smtp://mailer:right@127.0.0.1:{port}"
    controller.stop()


@pytest.fixture
def ai_url() -> Iterator[str]:
    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"data": [{"id": "tiny-model"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    with RedisServer(persistent=True) as server:
        yield server


@pytest.fixture
def healthy(durable_redis: RedisServer, database_url: str, smtp_url: str, ai_url: str) -> Settings:
    return make_settings(
        durable_redis.url,
        database_url=database_url,
        smtp_url=SecretStr(smtp_url),
        smtp_starttls="off",  # the test server has no TLS: a trusted relay
        ai_base_url=ai_url.replace("http://", "http://aiuser:ai-Secret-77@"),
        ai_model="tiny-model",
        job_signing_keys=SecretStr("s" * 32),
    )


async def test_everything_up(healthy: Settings) -> None:
    diagnosis = await diagnose(healthy)
    states = {c.component: c.state for c in diagnosis.checks}
    assert states == {
        "redis": "ok", "postgres": "ok", "email": "ok", "ai": "ok", "signing": "ok",
        "tracing": "not configured", "errors": "not configured",
    }, diagnosis.checks  # fmt: skip
    assert "ai-Secret-77" not in str(diagnosis.as_dict())  # AI_BASE_URL's password is redacted
    assert "aiuser:***@" in next(c.detail for c in diagnosis.checks if c.component == "ai")
    assert diagnosis.healthy
    assert "Redis up: jobs are queued and run by the worker" in diagnosis.behaviour


async def test_redis_down(healthy: Settings) -> None:
    diagnosis = await diagnose(healthy.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")}))
    redis = next(c for c in diagnosis.checks if c.component == "redis")
    assert redis.state == "not working"
    assert "start Redis or point REDIS_URL at it" in redis.fix
    assert not diagnosis.healthy
    assert any(line.startswith("Redis down: inline-policy jobs (email) run") for line in diagnosis.behaviour)


async def test_redis_that_evicts_and_keeps_nothing(healthy: Settings) -> None:
    with RedisServer(extra_args=["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]) as lru:
        diagnosis = await diagnose(healthy.model_copy(update={"redis_url": SecretStr(lru.url)}))
    redis = next(c for c in diagnosis.checks if c.component == "redis")
    assert redis.state == "degraded"
    assert "maxmemory-policy allkeys-lru can evict queued jobs" in redis.detail
    assert "no persistence" in redis.detail
    assert redis.fix == "set maxmemory-policy noeviction; enable appendonly yes"
    assert diagnosis.healthy  # degraded is not "not working"


async def test_postgres_down(healthy: Settings) -> None:
    down = healthy.model_copy(
        update={"database_url": SecretStr("postgresql://postgres@127.0.0.1:1/postgres")}
    )
    diagnosis = await diagnose(down)
    assert diagnosis.state_of("postgres") == "not working"
    assert any("Postgres down" in line for line in diagnosis.behaviour)


async def test_smtp_without_starttls_gets_no_password(healthy: Settings, smtp_url: str) -> None:
    # The server offers no STARTTLS: doctor refuses to send the password, as the transport does.
    diagnosis = await diagnose(healthy.model_copy(update={"smtp_starttls": "auto"}))
    email = next(c for c in diagnosis.checks if c.component == "email")
    assert email.state == "not working"
    assert "offers no STARTTLS" in email.detail
    assert "doctor did not send it" in email.detail
    assert "SMTP_STARTTLS=off" in email.fix


async def test_smtp_refusing_auth(healthy: Settings, smtp_url: str) -> None:
    wrong = SecretStr(smtp_url.replace(":right@", ":wrong@"))
    trusted_relay = {"smtp_url": wrong, "smtp_starttls": "off"}  # a relay on a private network
    diagnosis = await diagnose(healthy.model_copy(update=trusted_relay))
    email = next(c for c in diagnosis.checks if c.component == "email")
    assert email.state == "not working"
    assert "refused AUTH: 535" in email.detail
    assert email.fix == "check the user and password in SMTP_URL"
    assert "wrong" not in email.detail  # the password stays out of the report


async def test_cli_exit_codes_and_json(healthy: Settings) -> None:
    env = {
        **os.environ,
        "REDIS_URL": healthy.redis_url.get_secret_value(),
        "DATABASE_URL": healthy.database_url.get_secret_value(),
        "SMTP_URL": healthy.smtp_url.get_secret_value() if healthy.smtp_url else "",
        "AI_BASE_URL": healthy.ai_base_url or "",
        "AI_MODEL": "tiny-model",
        "SMTP_STARTTLS": "off",
        "LOG_LEVEL": "ERROR",
    }

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", "doctor", "--json"],
            cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    good, bad = await asyncio.gather(
        asyncio.to_thread(run, {}), asyncio.to_thread(run, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["ok"] is True
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["checks"][0]["state"] == "not working"
