"""A throwaway PostgreSQL cluster (initdb + postgres) on a loopback port.

initdb and postgres refuse to run as root. When we are root, both run as an existing
unprivileged account ("postgres" if present, else "nobody"; override with
$DEVSERVICES_PG_OS_USER) through Popen's user=/group= (setuid after fork), and the cluster
directory is chowned to that account.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote, urlsplit

from ._process import LOOPBACK, ServerProcess
from .binaries import find_postgres_bindir

__all__ = [
    "PostgresServer",
    "ensure_database",
    "os_user_for_postgres",
    "pg_probe",
    "pg_simple_query",
    "pg_url_probe",
    "user_can_reach",
    "with_database",
]

_PROTOCOL_3_0 = 196608
_TERMINATE = b"X\x00\x00\x00\x04"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"


class _Ended(Exception):
    """The conversation ended before an answer: `status` says how ("garbage" or "down")."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _startup(user: str, database: str) -> bytes:
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!ii", 8 + len(params), _PROTOCOL_3_0) + params


def _messages(sock: socket.socket, deadline: float) -> Iterator[tuple[bytes, bytes]]:
    """The server's messages (kind, body) as they arrive; raises `_Ended("garbage")` for bytes
    that are not the protocol and `_Ended("down")` when the server hangs up."""
    buf = b""
    while True:
        while len(buf) >= 5:
            kind = buf[:1]
            (length,) = struct.unpack("!i", buf[1:5])
            if length < 4 or length > 1 << 20:
                raise _Ended("garbage")
            if len(buf) < 1 + length:
                break
            body, buf = buf[5 : 1 + length], buf[1 + length :]
            yield kind, body
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(8192)
        if not chunk:
            raise _Ended("down")
        buf += chunk


def pg_probe(
    host: str,
    port: int,
    *,
    user: str = "postgres",
    database: str = "postgres",
    timeout: float = 1.0,
) -> str:
    """Speak the start of the wire protocol to host:port and report how far it got.

    Returns "ready" (authenticated and ReadyForQuery, i.e. trust auth and accepting queries),
    "auth" (server asks for a password/SASL), "starting" (57P03: starting up, recovering or
    shutting down), "error:<SQLSTATE>", "garbage" (not Postgres) or "down" (no connection).
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_startup(user, database))
            for kind, body in _messages(sock, deadline):
                if kind == b"E":
                    return _error_status(body)
                if kind == b"R":
                    (code,) = struct.unpack("!i", body[:4])
                    if code != 0:
                        return "auth"
                elif kind == b"Z":
                    with contextlib.suppress(OSError):
                        sock.sendall(_TERMINATE)
                    return "ready"
                elif kind not in (b"S", b"K", b"N", b"v"):
                    return "garbage"
    except _Ended as ended:
        return ended.status
    except OSError:
        return "down"
    return "down"


def pg_simple_query(
    host: str,
    port: int,
    sql: str,
    *,
    user: str = "postgres",
    database: str = "postgres",
    timeout: float = 5.0,
) -> str:
    """Run one statement over the wire protocol (trust auth only) and report how it went:
    "ok", or a pg_probe status ("auth", "down", "error:<SQLSTATE>", ...)."""
    query = sql.encode() + b"\0"
    deadline = time.monotonic() + timeout
    sent_query = False
    error: str | None = None
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_startup(user, database))
            for kind, body in _messages(sock, deadline):
                if kind == b"E":
                    error = _error_status(body)
                    if not sent_query:
                        return error
                elif kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                    return "auth"
                elif kind == b"Z":
                    if sent_query:
                        with contextlib.suppress(OSError):
                            sock.sendall(_TERMINATE)
                        return error or "ok"
                    sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
                    sent_query = True
    except _Ended as ended:
        return ended.status
    except OSError:
        return "down"
    return "down"


def ensure_database(url: str, timeout: float = 5.0) -> str:
    """Make the database named in a postgresql:// URL exist on its server (trust auth).

    Returns "exists", "created", or the probe status that prevented it ("down", "auth", ...).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5432
    user = unquote(parts.username) if parts.username else os.environ.get("USER", "postgres")
    database = unquote(parts.path.lstrip("/")) or user
    status = pg_probe(host, port, user=user, database=database, timeout=timeout)
    if status == "ready":
        return "exists"
    if status != "error:3D000":  # anything but "database does not exist"
        return status
    ident = '"' + database.replace('"', '""') + '"'
    for maintenance in ("postgres", "template1"):
        created = pg_simple_query(
            host, port, f"CREATE DATABASE {ident}", user=user, database=maintenance, timeout=timeout
        )
        if created == "ok":
            return "created"
        if created == "error:42P04":  # created meanwhile by another `make`
            return "exists"
        if created != "error:3D000":
            return created
    return "error:3D000"


def with_database(url: str, database: str) -> str:
    """`url` naming another database on the same server."""
    parts = urlsplit(url)
    return parts._replace(path="/" + quote(database, safe="")).geturl()


def _error_status(body: bytes) -> str:
    for field in body.split(b"\0"):
        if field[:1] == b"C":
            code = field[1:].decode("ascii", "replace")
            return "starting" if code == "57P03" else f"error:{code}"
    return "error:?"


def pg_url_probe(url: str, timeout: float = 2.0) -> bool:
    """True if a postgresql:// URL looks usable: "ready", or "auth" when the URL carries a password."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else os.environ.get("USER", "postgres")
    database = unquote(parts.path.lstrip("/")) or user
    status = pg_probe(
        parts.hostname or "localhost", parts.port or 5432, user=user, database=database, timeout=timeout
    )
    return status == "ready" or (status == "auth" and parts.password is not None)


def os_user_for_postgres() -> tuple[str, int, int] | None:
    """(name, uid, gid) to run initdb/postgres as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    names = [os.environ.get("DEVSERVICES_PG_OS_USER", ""), "postgres", "nobody"]
    for name in filter(None, names):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return name, entry.pw_uid, entry.pw_gid
    raise RuntimeError(
        "Running as root, and PostgreSQL refuses to run as root, but neither a 'postgres' nor a "
        "'nobody' account exists. Create one or set $DEVSERVICES_PG_OS_USER to an unprivileged account."
    )


def _user_can(path: str, mode_bits: tuple[int, int, int], who: tuple[str, int, int]) -> bool:
    """Permission check from mode bits for another account (os.access only checks ourselves)."""
    name, uid, gid = who
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == uid:
        return bool(st.st_mode & mode_bits[0])
    if st.st_gid in os.getgrouplist(name, gid):
        return bool(st.st_mode & mode_bits[1])
    return bool(st.st_mode & mode_bits[2])


def user_can_reach(path: str, who: tuple[str, int, int]) -> bool:
    """True if `who` can traverse every directory from / down to `path`."""
    current = os.path.realpath(path)
    while True:
        if not _user_can(current, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH), who):
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def _bindir_for_user(bindir: str, who: tuple[str, int, int]) -> str:
    """Return `bindir`, or a world-readable copy of its install if `who` cannot run it there.

    Happens with the pgserver wheel inside a root-only path (e.g. a venv under /root). The
    PostgreSQL build is relocatable (lib/ and share/ are found relative to bin/); the wheel's
    binaries also load auditwheel's site-packages/pgserver.libs via an $ORIGIN-relative rpath,
    so for pgserver the copy keeps the <pkg>/pginstall + <pkg>.libs layout.
    """
    postgres = os.path.join(bindir, "postgres")
    if user_can_reach(bindir, who) and _user_can(postgres, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH), who):
        return bindir
    real_bindir = os.path.realpath(bindir)
    prefix = os.path.dirname(real_bindir)
    trees = {"prefix": prefix}
    if os.path.basename(prefix) == "pginstall":
        package_dir = os.path.dirname(prefix)
        name = os.path.basename(package_dir)
        trees = {os.path.join(name, "pginstall"): prefix}
        if os.path.isdir(package_dir + ".libs"):
            trees[name + ".libs"] = package_dir + ".libs"
    st = os.stat(postgres)
    # Key on path and binary identity, so an upgraded package gets a fresh copy.
    digest = hashlib.sha256(f"{real_bindir}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = os.path.join(tempfile.gettempdir(), f"devservices-pginstall-{digest}")
    new_bindir = os.path.join(target, next(iter(trees)), os.path.basename(real_bindir))
    if os.path.isdir(target):
        return new_bindir
    staging = tempfile.mkdtemp(prefix="devservices-pginstall-tmp-", dir=tempfile.gettempdir())
    for rel, source in trees.items():
        shutil.copytree(source, os.path.join(staging, rel), symlinks=True)
    for root, dirs, files in os.walk(staging):
        for entry in dirs + files:
            full = os.path.join(root, entry)
            if not os.path.islink(full):
                mode = os.stat(full).st_mode
                # a+r everywhere, a+x where the owner has x (dirs, executables).
                os.chmod(full, mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))
    # The account postgres runs as must be able to read the copy: that is its purpose.
    os.chmod(staging, 0o755)  # noqa: S103
    try:
        os.rename(staging, target)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return new_bindir


class PostgresServer(ServerProcess):
    """PostgreSQL on 127.0.0.1:<free port>: trust auth, UTF8, fsync off, sockets in its dir.

    Data survives stop()/kill() + restart() (kill() leads to crash recovery on the next start).
    `settings` become `-c name=value` server options.
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, no waiting for them
    start_timeout = 30.0

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "postgres",
        settings: dict[str, str] | None = None,
        bindir: str | None = None,
        base_dir: str | None = None,
        detached: bool = False,
    ) -> None:
        super().__init__(port=port, base_dir=base_dir, detached=detached)
        self.user = user
        self.settings = dict(settings or {})
        self._bindir = bindir
        self._os_user = os_user_for_postgres()
        if self._os_user is not None:
            self._run_as = (self._os_user[1], self._os_user[2])
        self._socket_dir: str | None = None
        self._own_socket_dir = False  # True when the socket dir lives outside base_dir

    @property
    def bindir(self) -> str:
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return self._bindir

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base_dir, "data")

    @property
    def socket_dir(self) -> str:
        if self._socket_dir is None:
            candidate = os.path.join(self.base_dir, "sock")
            if len(candidate) > _SOCKET_PATH_MAX - 16:
                candidate = tempfile.mkdtemp(prefix="pgsock-")
                self._own_socket_dir = True
            self._socket_dir = candidate
        return self._socket_dir

    @property
    def url(self) -> str:
        return f"postgresql://{quote(self.user, safe='')}@{LOOPBACK}:{self.port}/postgres"

    def probe(self, timeout: float = 1.0) -> str:
        """pg_probe against this server (see pg_probe for the statuses)."""
        return pg_probe(LOOPBACK, self.port, user=self.user, timeout=timeout)

    def _env(self) -> dict[str, str]:
        # PG* variables from the caller (PGDATA, PGPORT, ...) must not leak into our cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")  # TZ skips initdb's slow timezone probing
        return env

    def _prepare(self) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        os.makedirs(self.socket_dir, exist_ok=True)
        if self._os_user is not None:
            # We are root: hand the cluster dirs to the unprivileged account.
            self._bindir = _bindir_for_user(self.bindir, self._os_user)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, self._os_user[1], self._os_user[2])
                os.chmod(path, 0o700)
                if not user_can_reach(path, self._os_user):
                    raise RuntimeError(
                        f"{path} is not reachable by the account {self._os_user[0]!r} that PostgreSQL "
                        "runs as (root cannot run it); pick a directory outside root-only paths"
                    )
        if not os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            self.run_setup_command([
                os.path.join(self.bindir, "initdb"),
                "-D", self.data_dir,
                "-U", self.user,
                "-A", "trust",
                "-E", "UTF8",
                "--no-locale",
                "-N",  # no fsync of the new cluster: it is throwaway
            ])  # fmt: skip

    def _command(self) -> list[str]:
        # fsync=off still write()s WAL at commit, so a kill() (process crash, not an OS crash)
        # keeps every committed transaction; synchronous_commit=off would lose the last ones.
        options = {"fsync": "off", "full_page_writes": "off", **self.settings}
        cmd = [
            os.path.join(self.bindir, "postgres"),
            "-D", self.data_dir,
            "-p", str(self.port),
            "-h", LOOPBACK,
            "-k", self.socket_dir,
        ]  # fmt: skip
        for name, value in options.items():
            cmd += ["-c", f"{name}={value}"]
        return cmd

    def _probe(self) -> bool:
        return self.probe(timeout=1.0) == "ready"

    def _remove_dir(self) -> None:
        if self._own_socket_dir and self._socket_dir is not None and not self._detached:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._own_socket_dir = False
        super()._remove_dir()
        if self._base_dir is None:
            self._socket_dir = None
