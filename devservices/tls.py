"""A TLS-terminating loopback proxy: TLS clients in front, a plain TCP server behind.

TLS tests need a Redis that speaks TLS, and a Redis build may have none (the pip-shipped
valkey-server is built without it). This proxy gives any plain server a TLS front of the
project's own, with the standard library's `ssl`: the server certificate and key it presents,
and optionally a CA whose signature it requires on client certificates (`--tls-auth-clients
yes`). It runs its event loop in a thread, so synchronous fixtures can own it:

    with RedisServer() as redis, TlsProxy(redis.port, cert_file=..., key_file=...) as tls:
        url = f"rediss://localhost:{tls.port}/0"
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from types import TracebackType
from typing import Self

from ._process import LOOPBACK

__all__ = ["TlsProxy"]

_CHUNK = 65536


class TlsProxy:
    """Accept TLS on 127.0.0.1:<port> and forward the plaintext to `target_port`."""

    def __init__(
        self,
        target_port: int,
        *,
        cert_file: str,
        key_file: str,
        client_ca_file: str | None = None,
        target_host: str = LOOPBACK,
        listen_host: str = LOOPBACK,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert_file, key_file)
        if client_ca_file is not None:
            self._context.load_verify_locations(client_ca_file)
            self._context.verify_mode = ssl.CERT_REQUIRED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.handshakes_failed = 0  # for assertions: a refused client certificate counts here

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("TlsProxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("TlsProxy already started")
        loop = self._loop = asyncio.new_event_loop()
        # Failed handshakes (a client refusing our certificate) are expected in tests: count
        # them instead of letting asyncio log a traceback for each.
        loop.set_exception_handler(self._on_loop_error)
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._handle, self.listen_host, 0, ssl=self._context, ssl_handshake_timeout=5
                    )
                )
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="tls-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            self._thread.join(5)
            loop.close()
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError | TimeoutError):
            self.handshakes_failed += 1
            return
        loop.default_exception_handler(context)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(self.target_host, self.target_port)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for side in (writer, upstream):
                if side is not None:
                    with contextlib.suppress(Exception):
                        side.close()
            self._handlers.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
