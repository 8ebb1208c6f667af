"""Process plumbing shared by the Redis and Postgres throwaway servers.

`ServerProcess` owns one server child: it picks a port, launches the child in its own
process group, waits until a subclass-provided probe says it is ready, and makes sure the
child is gone when the interpreter exits (atexit, plus PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

__all__ = [
    "LOOPBACK",
    "ServerProcess",
    "pick_port",
    "process_start_time",
    "tail",
]

LOOPBACK = "127.0.0.1"

# Every live ServerProcess that still needs cleanup; atexit walks this set.
_LIVE: set[ServerProcess] = set()
_LIVE_LOCK = threading.Lock()

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: calling into libc after fork is fine, loading it is not.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low, high = (int(x) for x in fh.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int, host: str = LOOPBACK, *, allow_time_wait: bool = False) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if allow_time_wait:
            # Servers bind with SO_REUSEADDR too: TIME_WAIT leftovers of a killed server are
            # fine, a live listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str = LOOPBACK) -> int:
    """Return a currently unused TCP port below the kernel's ephemeral range.

    Staying out of the ephemeral range matters for restart(): while a server is down, an
    outgoing connection could otherwise be handed its port and the restart would fail.
    """
    low, _high = _ephemeral_range()
    if low > 12000:
        for _ in range(200):
            port = random.randint(10000, low - 1)
            if _port_is_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: str, lines: int = 30) -> str:
    """Last `lines` lines of a log file, or a note saying it could not be read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def process_start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), used to tell a pid from its reuse.

    Returns None when the process does not exist, is a zombie, or /proc is unavailable.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses, so split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


class ServerProcess:
    """Base class: one server child process on a loopback port, in a directory it may own.

    Subclasses implement `_command()` and `_probe()`, and may override `_prepare()` (one-time
    setup before the first start) and the signal used by `stop()`.
    """

    kind = "server"
    stop_signal = signal.SIGTERM
    start_timeout = 10.0

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: str | None = None,
        detached: bool = False,
    ) -> None:
        self._fixed_port = port is not None
        self._port = port if port is not None else pick_port()
        self._owns_dir = base_dir is None
        self._base_dir = base_dir
        self._detached = detached
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._started_once = False
        self._run_as: tuple[int, int] | None = None  # (uid, gid) when dropping root

    # -- public surface -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_dir(self) -> str:
        """Directory holding the server's data and log (created lazily)."""
        if self._base_dir is None:
            self._base_dir = tempfile.mkdtemp(prefix=f"devservices-{self.kind}-")
        return self._base_dir

    @property
    def log_path(self) -> str:
        return os.path.join(self.base_dir, f"{self.kind}.log")

    @property
    def url(self) -> str:
        """Connection URL clients should use."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Pid of the server process while it is running (or exited but not yet cleaned up)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._leader_exited()

    def start(self) -> Self:
        """Launch the server and block until it answers, or raise RuntimeError with its log tail."""
        if self.running:
            raise RuntimeError(f"{self.kind} on port {self._port} is already running")
        if not self._detached:
            with _LIVE_LOCK:
                _LIVE.add(self)
        if not self._prepared:
            self._prepare()
            self._prepared = True
        # A port picked by us can be stolen between the probe and the bind, so retry with a
        # fresh one; a port the caller chose (or a restart) must stay the same.
        attempts = 1 if (self._fixed_port or self._started_once) else 3
        for attempt in range(attempts):
            error = self._launch_and_wait()
            if error is None:
                self._started_once = True
                return self
            if attempt + 1 < attempts and error.startswith(("exited", "port")):
                self._port = pick_port()
                continue
            raise RuntimeError(
                f"{self.kind} failed to start on {LOOPBACK}:{self._port}: {error}\n"
                f"command: {' '.join(self._command())}\n"
                f"--- last lines of {self.log_path} ---\n{tail(self.log_path)}"
            )
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown; escalates to SIGKILL after `timeout` seconds."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(self.stop_signal)
            deadline = time.monotonic() + timeout
            while not self._leader_exited() and time.monotonic() < deadline:
                time.sleep(0.02)
        self._finish()

    def kill(self) -> None:
        """SIGKILL the server and every process in its group (backends included): a crash."""
        self._finish()

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port with the same arguments."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its directory if this object created it."""
        self.stop()
        self._remove_dir()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- subclass hooks ---------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """One-time setup before the first start (e.g. initdb)."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- internals --------------------------------------------------------------------

    def _spawn_identity(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for Popen: set only when dropping root."""
        if self._run_as is None:
            return None, None, None
        return self._run_as[0], self._run_as[1], []

    def _preexec(self) -> Callable[[], None] | None:
        # PDEATHSIG fires when the spawning *thread* exits, so only use it from the main thread,
        # which lives as long as the interpreter; other threads rely on atexit alone.
        if self._detached or _PRCTL is None or threading.current_thread() is not threading.main_thread():
            return None
        return _make_pdeathsig_preexec(os.getpid())

    def run_setup_command(self, argv: Sequence[str], timeout: float = 120.0) -> None:
        """Run a one-shot helper (like initdb) as the server's user, logging to its log file."""
        user, group, extra_groups = self._spawn_identity()
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._env(),
                timeout=timeout,
                check=False,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {result.returncode}\n"
                f"--- last lines of {self.log_path} ---\n{tail(self.log_path)}"
            )

    def _launch_and_wait(self) -> str | None:
        """Spawn the child; return None once ready, else a short reason."""
        if not _port_is_free(self._port, allow_time_wait=True):
            # Otherwise the readiness probe could be answered by whoever holds the port.
            return "port is already in use"
        user, group, extra_groups = self._spawn_identity()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._env(),
                # Own process group: kill() takes children with it, and a Ctrl-C in the
                # terminal does not reach a detached server.
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=extra_groups,
                preexec_fn=self._preexec(),
            )
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            if self._leader_exited():
                proc = self._proc
                self._finish()
                return f"exited with code {proc.returncode}"
            if self._probe() and not self._leader_exited():
                return None
            if time.monotonic() > deadline:
                self._finish()
                return f"not answering after {self.start_timeout:.0f}s"
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _leader_exited(self) -> bool:
        """Has the server process exited? Does not reap it, so its pid stays reserved."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return proc.poll() is not None

    def _finish(self) -> None:
        """SIGKILL whatever is left of the process group, then reap the leader and forget it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # The leader is not reaped yet (alive or zombie), so its pid, which is the group id,
            # cannot have been reused: this only hits the server and its children.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self._proc = None

    def _remove_dir(self) -> None:
        if self._owns_dir and self._base_dir is not None and not self._detached:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
            self._prepared = False

    def _atexit_cleanup(self) -> None:
        self.kill()
        self._remove_dir()


def _make_pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    prctl = _PRCTL

    def preexec() -> None:
        # Runs in the child between fork and exec: ask the kernel to SIGKILL us if the parent
        # dies (covers a test runner killed by SIGKILL or os._exit, where atexit never runs).
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


@atexit.register
def _cleanup_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
        _LIVE.clear()
    for server in servers:
        with contextlib.suppress(Exception):
            server._atexit_cleanup()
