"""An asyncio loopback TCP proxy that can simulate network faults between a client and a server.

Usage: `proxy = TcpProxy("127.0.0.1", redis.port)`, `await proxy.start()`, point the client at
`proxy.url_for(redis.url)`, then `proxy.blackhole()` (bytes silently vanish: reads hang until
the client's own timeout), `proxy.restore()` (new connections work again), `proxy.cut()`
(every current connection is reset) and finally `await proxy.stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_CHUNK = 65536


class _Link:
    """One proxied connection: the accepted client side and (if connected) the upstream side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        # Once dropped, a link never forwards again, even after restore(): bytes already
        # swallowed would leave both ends with a corrupt protocol stream.
        self.dropped = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def close(self) -> None:
        for writer in self.writers():
            writer.close()

    def reset(self) -> None:
        """Close both sides with SO_LINGER=0 so the peers get a RST, not a FIN."""
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class TcpProxy:
    """Forward 127.0.0.1:<port> to (target_host, target_port), with blackhole/cut fault switches."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._blackholed = False
        self._blackhole_marker: bytes | None = None
        self.accepted = 0  # connections accepted so far, for assertions in tests

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("TcpProxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy (blackholed ones included)."""
        return len(self._links)

    def url_for(self, url: str) -> str:
        """`url` with its host:port replaced by the proxy's (scheme, credentials, path kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += f"{self.listen_host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("TcpProxy already started")
        self._server = await asyncio.start_server(self._handle, self.listen_host, self._listen_port)

    def blackhole(self) -> None:
        """Keep accepting and keep every connection open, but forward nothing in either direction."""
        self._blackholed = True
        for link in self._links:
            link.dropped = True

    def blackhole_after(self, marker: bytes) -> None:
        """Forward until a client sends bytes containing `marker`; forward those, then blackhole
        (so the server acts on a command whose reply never comes back)."""
        self._blackhole_marker = marker

    def restore(self) -> None:
        """Forward again for connections accepted from now on (blackholed ones stay dead)."""
        self._blackholed = False

    def cut(self) -> None:
        """Reset every current connection, both towards the client and towards the target."""
        for link in list(self._links):
            link.reset()

    async def stop(self) -> None:
        """Stop listening, reset every connection and wait for the handlers to finish."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self.cut()
        if self._handlers:
            _done, pending = await asyncio.wait(set(self._handlers), timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        await server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- internals ----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self._blackholed:
                link.dropped = True
                await self._pump(link, reader, None)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                # Target down: the client sees its connection closed, much like a refusal.
                link.reset()
                return
            link.upstream = up_writer
            if self._server is None:  # stop() ran while we were connecting
                return
            await asyncio.gather(
                self._pump(link, reader, up_writer, from_client=True),
                self._pump(link, up_reader, writer),
            )
        except asyncio.CancelledError:
            pass
        finally:
            self._links.discard(link)
            link.close()
            self._handlers.discard(task)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        *,
        from_client: bool = False,
    ) -> None:
        """Copy reader -> writer until EOF; while the link is dropped, read and discard."""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if link.dropped or writer is None:
                    continue
                writer.write(data)
                await writer.drain()
                marker = self._blackhole_marker
                if from_client and marker is not None and marker in data:
                    self._blackhole_marker = None
                    self.blackhole()
        except (ConnectionError, OSError):
            if not link.dropped:
                link.reset()  # pass a reset on to the other side
            return
        # EOF: a dead network would not deliver the FIN either, so only pass it on when live.
        if not link.dropped and writer is not None and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
