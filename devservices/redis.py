"""A throwaway redis-server (or valkey-server) on a loopback port, for dev runs and fault tests."""

from __future__ import annotations

import socket
import time
from urllib.parse import quote, unquote, urlsplit

from ._process import LOOPBACK, ServerProcess
from .binaries import find_redis_server

__all__ = ["RedisServer", "redis_ping", "redis_url_ping"]


def _resp(*args: str) -> bytes:
    """Encode one command in RESP (the only framing redis accepts besides inline commands)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def redis_ping(
    host: str,
    port: int,
    *,
    password: str | None = None,
    username: str | None = None,
    timeout: float = 1.0,
) -> bool:
    """True if a Redis on host:port answers PING with +PONG over a raw socket (after AUTH if given)."""
    commands = []
    if password is not None:
        commands.append(_resp("AUTH", username, password) if username else _resp("AUTH", password))
    commands.append(_resp("PING"))
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"".join(commands))
            buf = b""
            # Each reply to AUTH/PING is a single line (+OK, +PONG, -ERR ...).
            while buf.count(b"\r\n") < len(commands):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                buf += chunk
    except OSError:
        return False
    last = buf.split(b"\r\n")[len(commands) - 1]
    return last == b"+PONG"


def redis_url_ping(url: str, timeout: float = 1.0) -> bool:
    """redis_ping for a redis:// URL (credentials honoured; rediss:// only gets a TCP connect)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    if parts.scheme == "rediss":
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    return redis_ping(host, port, password=password, username=username, timeout=timeout)


class RedisServer(ServerProcess):
    """redis-server on 127.0.0.1:<free port>, data dir in a temp dir, no persistence by default.

    `extra_args` are appended after ours, so they override (e.g. ["--maxmemory", "10mb",
    "--maxmemory-policy", "allkeys-lru"]). The plain `port` is always served and used for the
    readiness PING, so TLS tests add `--tls-port` etc. alongside it. `persistent=True` turns on
    the append-only file, so data survives stop()/kill() + restart().
    """

    kind = "redis"

    def __init__(
        self,
        *,
        password: str | None = None,
        extra_args: list[str] | None = None,
        port: int | None = None,
        persistent: bool = False,
        binary: str | None = None,
        base_dir: str | None = None,
        detached: bool = False,
    ) -> None:
        super().__init__(port=port, base_dir=base_dir, detached=detached)
        self.password = password
        self.extra_args = list(extra_args or [])
        self.persistent = persistent
        self._binary = binary

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_redis_server()
        return self._binary

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def ping(self, timeout: float = 1.0) -> bool:
        return redis_ping(LOOPBACK, self.port, password=self.password, timeout=timeout)

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", self.base_dir,
            "--daemonize", "no",
            "--logfile", "",  # stdout, which is our log file
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def _probe(self) -> bool:
        return self.ping(timeout=0.5)
