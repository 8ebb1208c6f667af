"""`python -m worker serve`: run the HTTP API under uvicorn, with httptools (its fast HTTP parser)
and uvloop (its fast event loop; the worker keeps asyncio's). One process serves about 6,700
enqueues a second on two cores; most of its time goes to the HTTP protocol and socket writes
(`bench/REPORT.md`, "HTTP enqueue API").

One process holds one `Producer`. It refuses to start without `API_TOKENS` unless
`API_DEV_NO_AUTH=true` and `API_HOST` is a loopback address (settings refuse the flag on any
other address), so a service reachable from the network always asks for a token.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Iterator

import structlog
import uvicorn
from starlette.applications import Starlette

from core.registry import Registry
from jobs import registry_for
from settings import Settings
from worker.ops.http.app import create_app
from worker.ops.http.dashboard import dashboard_routes

__all__ = ["build_server", "serve", "startup_problem"]

log = structlog.get_logger(__name__)


def startup_problem(settings: Settings) -> str | None:
    """Why `serve` must not start with these settings, or None."""
    if settings.api_tokens is not None:
        return None
    if settings.api_dev_no_auth and settings.api_host_is_loopback:
        return None
    return (
        "API_TOKENS: not set; the API needs at least one bearer token. Generate one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))' and set API_TOKENS to it "
        "(several, separated by spaces, for rotation); for development on this machine only, "
        "API_DEV_NO_AUTH=true with API_HOST=127.0.0.1 serves without auth"
    )


class _Server(uvicorn.Server):
    """uvicorn's server, except for signals: SIGTERM and SIGINT stop it gracefully and the process
    then exits 0, like the worker (uvicorn re-raises the signal after stopping, which ends the
    process with status 143); with `handle_signals=False` (a server inside a test's or another
    app's event loop) it installs no handlers at all."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def build_server(settings: Settings, app: Starlette, *, handle_signals: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        lifespan="on",
        http="httptools",
        ws="none",
        loop="auto",  # uvloop when installed (a dependency), else asyncio
        log_config=None,  # our logging, configured once at the entry point
        access_log=False,  # one line per request would cost more than the request
        server_header=False,
        proxy_headers=False,  # no use for X-Forwarded-For here; it would cost a middleware per request
        timeout_keep_alive=30,
    )
    return _Server(config, handle_signals=handle_signals)


def serve(settings: Settings, *, registry: Registry | None = None) -> int:
    problem = startup_problem(settings)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    try:
        registry = registry if registry is not None else registry_for(settings)  # ValueError
        dashboard = dashboard_routes(settings, registry) if settings.dashboard_enabled else []
        app = create_app(settings, registry=registry, extra_routes=dashboard)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if settings.api_tokens is None:
        log.warning("API serving WITHOUT authentication (API_DEV_NO_AUTH); for development only")
    server = build_server(settings, app, handle_signals=True)
    # What is alive now (modules, job models, the app) lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise stall every request for tens of ms.
    gc.collect()
    gc.freeze()
    server.run()
    return 0 if server.started else 1
