"""The worker's HTTP endpoints: /healthz, /readyz and /metrics.

The server runs in a thread of its own so that /healthz can report a stuck event loop (a
heartbeat task on the loop stops ticking) instead of just not answering. Queue depth is read
from Redis only when /metrics is scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import structlog

from worker.telemetry.metrics import Metrics

__all__ = ["HealthServer"]

log = structlog.get_logger(__name__)

_STUCK_AFTER_S = 10.0
_BEAT_EVERY_S = 1.0


class HealthServer:
    """Serves health and metrics for one worker; `start()` on the loop, `stop()` at shutdown."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        ready: Callable[[], bool],
        queue_depth: Callable[[], Coroutine[Any, Any, int]],
        queue_name: str,
    ) -> None:
        self._address = (host, port)
        self._metrics = metrics
        self._is_ready = ready
        self._queue_depth = queue_depth
        self._queue_name = queue_name
        self._last_beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadingHTTPServer | None = None
        self._beat_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._address[1]

    def start(self) -> bool:
        """Start serving; False (and one error line) if the port cannot be bound."""
        self._loop = asyncio.get_running_loop()
        try:
            self._server = ThreadingHTTPServer(self._address, self._handler_class())
        except OSError as exc:
            log.error("health server not started", port=self._address[1], error=str(exc))
            return False
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True).start()
        self._beat_task = self._loop.create_task(self._beat())
        log.info("health server listening", port=self.port, paths=["/healthz", "/readyz", "/metrics"])
        return True

    async def stop(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()

    async def _beat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            await asyncio.sleep(_BEAT_EVERY_S)

    # -- request handling (runs in the server's threads) -----------------------------------------

    def _health(self) -> tuple[int, dict[str, Any]]:
        lag = time.monotonic() - self._last_beat
        if lag > _STUCK_AFTER_S:
            return 503, {"status": "stuck", "loop_silent_s": round(lag, 1)}
        return 200, {"status": "ok"}

    def _ready(self) -> tuple[int, dict[str, Any]]:
        if self._is_ready():
            return 200, {"status": "ready", "redis": "up"}
        return 503, {"status": "not ready", "redis": "down"}

    def _metrics_text(self) -> bytes:
        if self._loop is not None and self._is_ready():
            future = asyncio.run_coroutine_threadsafe(self._queue_depth(), self._loop)
            try:
                self._metrics.queue_depth.labels(self._queue_name).set(future.result(timeout=1.0))
            except Exception:
                future.cancel()
        return self._metrics.render()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, server._metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
                elif path in ("/healthz", "/readyz"):
                    status, body = server._health() if path == "/healthz" else server._ready()
                    self._send(status, orjson.dumps(body), "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the job log

        return Handler
