"""The worker's HTTP endpoints: /healthz, /readyz and /metrics.

The server runs on an event loop of its own, in a thread of its own, so /healthz can report a
stuck main event loop (a heartbeat task there stops ticking) instead of just not answering.
Queue depth is read from Redis only when /metrics is scraped.

It is small on purpose and bounded, since anyone who can reach the port can open connections:
at most `_MAX_CONNECTIONS` waiting for their request at once (a new one pushes out the one
waiting longest, so the process keeps its file handles for jobs and a probe still gets in),
each closed after `_READ_TIMEOUT_S` without a complete request, requests of at most
`_MAX_REQUEST_BYTES`, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import structlog

from worker.telemetry.metrics import Metrics

__all__ = ["HealthServer"]

log = structlog.get_logger(__name__)

_STUCK_AFTER_S = 10.0
_BEAT_EVERY_S = 1.0
_MAX_CONNECTIONS = 64
_READ_TIMEOUT_S = 5.0
_MAX_REQUEST_BYTES = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


class HealthServer:
    """Serves health and metrics for one worker; `start()` on the loop, `stop()` at shutdown."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        ready: Callable[[], bool],
        queue_depth: Callable[[], Coroutine[Any, Any, dict[str, int]]],
    ) -> None:
        self._address = (host, port)
        self._metrics = metrics
        self._is_ready = ready
        self._queue_depth = queue_depth  # jobs waiting, per queue name
        self._last_beat = time.monotonic()
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._beat_task: asyncio.Task[None] | None = None
        # Connections still reading their request, oldest first (a dict keeps insertion order).
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self.port = port

    def start(self) -> bool:
        """Start serving; False (and one error line) if the port cannot be bound."""
        self._main_loop = asyncio.get_running_loop()
        ready = threading.Event()
        failure: list[OSError] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, *self._address, limit=_MAX_REQUEST_BYTES)
                )
            except OSError as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="health-http", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            # The worker keeps running jobs (its main duty) without the endpoints, and says so.
            host, port = self._address
            in_use = failure[0].errno == errno.EADDRINUSE
            log.error(
                "health server not started; this worker runs without /healthz, /readyz and /metrics",
                host=host,
                port=port,
                error=f"port {port} is in use" if in_use else str(failure[0]),
                fix=(
                    "another process, perhaps another worker on this machine, has the port: give each "
                    "worker its own WORKER_HTTP_PORT (0 turns the server off), or run one "
                    "`python -m worker run --processes N`, whose process i serves on WORKER_HTTP_PORT + i"
                    if in_use
                    else "set WORKER_HTTP_HOST and WORKER_HTTP_PORT to an address this host can bind"
                ),
            )
            self._loop = None
            return False
        self._beat_task = self._main_loop.create_task(self._beat())
        log.info("health server listening", port=self.port, paths=["/healthz", "/readyz", "/metrics"])
        return True

    async def stop(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            await server.wait_closed()

        with contextlib.suppress(TimeoutError, RuntimeError):
            await asyncio.wait_for(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), loop)), 5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    async def _beat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            await asyncio.sleep(_BEAT_EVERY_S)

    # -- the server's own loop ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._waiting) >= _MAX_CONNECTIONS:
            # Full of clients that have not sent a request: hang up on the one waiting longest,
            # so idle sockets cannot keep a probe from getting its answer.
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.close()
        self._waiting[writer] = None
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                path = await self._read_request(reader)
            self._waiting.pop(writer, None)
            status, body, content_type = await self._respond(path)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # an idle, slow, oversized or broken client: just hang up
        finally:
            self._waiting.pop(writer, None)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> str | None:
        """The path of a GET, or None for anything else; reads the headers, bounded."""
        line = (await reader.readuntil(b"\n")).decode("latin-1")
        size = len(line)
        while (header := await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
            size += len(header)
            if size > _MAX_REQUEST_BYTES:
                raise ValueError("request too large")
        parts = line.split()
        if len(parts) != 3 or parts[0] != "GET":
            return None
        return parts[1].split("?", 1)[0]

    async def _respond(self, path: str | None) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, await self._metrics_text(), "text/plain; version=0.0.4; charset=utf-8"
        if path in ("/healthz", "/readyz"):
            status, body = self._health() if path == "/healthz" else self._ready()
            return status, orjson.dumps(body), "application/json"
        if path is None:
            return 400, b'{"error": "only GET is served"}', "application/json"
        return 404, b'{"error": "not found"}', "application/json"

    def _health(self) -> tuple[int, dict[str, Any]]:
        lag = time.monotonic() - self._last_beat
        if lag > _STUCK_AFTER_S:
            return 503, {"status": "stuck", "loop_silent_s": round(lag, 1)}
        return 200, {"status": "ok"}

    def _ready(self) -> tuple[int, dict[str, Any]]:
        if self._is_ready():
            return 200, {"status": "ready", "redis": "up"}
        return 503, {"status": "not ready", "redis": "down"}

    async def _metrics_text(self) -> bytes:
        if self._main_loop is not None and self._is_ready():
            future = asyncio.run_coroutine_threadsafe(self._queue_depth(), self._main_loop)
            try:
                async with asyncio.timeout(1.0):
                    depth = await asyncio.wrap_future(future)
            except Exception:  # a stuck loop or a Redis error: the gauge keeps its last value
                future.cancel()
            else:
                for name, waiting in depth.items():
                    self._metrics.queue_depth.labels(name).set(waiting)
        return self._metrics.render()
