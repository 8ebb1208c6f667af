"""The HTTP service for tests: `serving(settings)` runs `python -m worker serve`'s app under
uvicorn in the test's own event loop, on a free loopback port, with the test registry."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from pydantic import SecretStr

from core.registry import Registry
from settings import Settings
from tests.conftest import eventually
from tests.sample_jobs import TEST_REGISTRY
from worker.ops.http import build_server, create_app
from worker.ops.http.dashboard import dashboard_routes

__all__ = ["TOKEN", "TOKENS", "TOKEN_2", "TOKEN_EVENTS", "TOKEN_RECORD_ONLY", "serving"]

TOKEN = "test-token-0123456789abcdef"
TOKEN_2 = "rotated-token-fedcba9876543210"
TOKEN_RECORD_ONLY = "scoped-token-aaaabbbbccccdddd"
TOKEN_EVENTS = "events-token-1111222233334444"
TOKENS = f"{TOKEN} {TOKEN_2} {TOKEN_RECORD_ONLY}:record,record_spooled {TOKEN_EVENTS}:events"


@asynccontextmanager
async def serving(
    settings: Settings, *, registry: Registry = TEST_REGISTRY, dashboard: bool = False
) -> AsyncIterator[str]:
    """The service's base URL while it runs (with the /ui dashboard when `dashboard`); it is
    stopped (its producer closed) on exit."""
    if settings.api_tokens is None and not settings.api_dev_no_auth:
        tokens = TOKENS if "record" in registry.names() else f"{TOKEN} {TOKEN_2} {TOKEN_EVENTS}:events"
        settings = settings.model_copy(update={"api_tokens": SecretStr(tokens)})
    extra = dashboard_routes(settings, registry) if dashboard else []
    server = build_server(settings, create_app(settings, registry=registry, extra_routes=extra))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), what="the API server to start")
        if task.done():
            task.result()
            raise RuntimeError("the API server stopped at start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


def start_serve(env: dict[str, str], port: int, root: str, timeout: float = 30) -> subprocess.Popen[str]:
    """`python -m worker serve` in a process of its own, returned once its /readyz answers 200
    (stopped, and the test failed with its output, if it exits or never gets there)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "serve"], cwd=root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"serve did not become ready: {(out + err)[-3000:]}")
        time.sleep(0.05)
