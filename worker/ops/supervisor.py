"""`python -m worker run --processes N`: one command that runs N worker processes on the same
queues, one per core, and keeps them running.

The supervisor does no job work and holds no connection: it starts each child as
`python -m worker run <the same arguments> --child-of <its pid> --child-index <i>`, so a child
is the ordinary worker, configured the same way, and its own settings, logs and health apply.

- Child i serves health and metrics on WORKER_HTTP_PORT + i (0 keeps it off for all), so the
  ports of one group never collide; the supervisor checks they are free before it starts any.
- SIGTERM or SIGINT to the supervisor is passed to every child, which drains as a lone worker
  does; a child still running WORKER_SHUTDOWN_GRACE + `STOP_MARGIN_S` later is killed.
- A child that exits on its own (other than with 0 in burst mode) is logged with its exit code
  or signal and started again after a delay that doubles from 1 s up to `BACKOFF_MAX_S`, and
  falls back to 1 s once a child has run `HEALTHY_AFTER_S`: a child that crashes at start is
  retried slowly, never in a hot loop.
- With `--burst`, the supervisor exits once every child has exited 0 (the queues are empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from settings import Settings

__all__ = [
    "BACKOFF_MAX_S",
    "HEALTHY_AFTER_S",
    "STOP_MARGIN_S",
    "Supervisor",
    "as_child",
    "child_port",
    "child_run_args",
    "die_with_parent",
]

log = structlog.get_logger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0  # a child that ran this long before dying restarts after BACKOFF_START_S
# Beyond the grace a child needs to write its last outcomes, forget its snapshot and close pools.
STOP_MARGIN_S = 5.0
_PR_SET_PDEATHSIG = 1


def child_run_args(run_args: Sequence[str]) -> list[str]:
    """The `run` arguments as given, less `--processes`: what every child is started with, so
    an option `run` gains later reaches the children without the supervisor knowing it."""
    out: list[str] = []
    skip = False
    for arg in run_args:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def child_port(base: int, index: int) -> int:
    """Child `index`'s health and metrics port: 0 (off) stays 0 for every child."""
    return base + index if base else 0


def as_child(settings: Settings, parent_pid: int, index: int) -> Settings:
    """In child `index` of supervisor `parent_pid`: follow the supervisor's life, tag every log
    line with `child` (N processes share one stderr), and take the child's own health port."""
    die_with_parent(parent_pid)
    structlog.contextvars.bind_contextvars(child=index)
    return settings.model_copy(update={"worker_http_port": child_port(settings.worker_http_port, index)})


def die_with_parent(parent_pid: int) -> None:
    """In a child: ask Linux to send SIGTERM when the supervisor dies (even by SIGKILL), so no
    orphaned worker keeps running; a child whose supervisor is already gone exits at once."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(0)


def _port_problem(host: str, port: int) -> str | None:
    """Why `port` cannot be bound on `host` now, or None. SO_REUSEADDR as the health server
    binds, so a port in TIME_WAIT after a restart is not mistaken for one in use."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else str(exc)
    return None


@dataclass
class _Child:
    index: int
    port: int
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)


def _how_it_ended(code: int) -> dict[str, object]:
    """A child's return code as log fields: `exit_code`, or `signal` when a signal killed it."""
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"exit_code": code}


class Supervisor:
    """Runs `count` children until stopped (or, with `burst`, until all exit 0); `run()` returns
    the exit code: 0 when every child ended cleanly, 1 when one had to be killed or failed."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        run_args: Sequence[str],
        *,
        burst: bool,
        command: Sequence[str] = (sys.executable, "-m", "worker", "run"),
    ) -> None:
        self.settings = settings
        self.burst = burst
        self._command = [*command, *child_run_args(run_args)]
        base = settings.worker_http_port
        self.children = [_Child(i, child_port(base, i)) for i in range(count)]
        self._stop = asyncio.Event()
        self._grace = settings.worker_shutdown_grace + STOP_MARGIN_S

    def check_ports(self) -> str | None:
        """Why the group's health ports cannot be used (naming the port, the child and the fix),
        or None."""
        base, count = self.settings.worker_http_port, len(self.children)
        if not base:
            return None
        if base + count - 1 > 65535:
            return (
                f"WORKER_HTTP_PORT: {base} + {count - 1} is past port 65535; child i serves health on "
                f"WORKER_HTTP_PORT + i, so use a port at most {65536 - count} (or 0 for no health server)"
            )
        for child in self.children:
            problem = _port_problem(self.settings.worker_http_host, child.port)
            if problem is not None:
                return (
                    f"WORKER_HTTP_PORT: port {child.port} (health of worker process {child.index}, at "
                    f"WORKER_HTTP_PORT + {child.index}) is {problem} on {self.settings.worker_http_host}; "
                    f"another worker may be running there: stop it, or set WORKER_HTTP_PORT to the first "
                    f"of {count} free ports (0 turns health off)"
                )
        return None

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """What SIGTERM and SIGINT do: pass SIGTERM to every child and let them drain."""
        if self._stop.is_set():
            log.info("supervisor already stopping", signal=signal.Signals(signum).name)
            return
        log.info(
            "supervisor stopping worker processes",
            signal=signal.Signals(signum).name,
            processes=len(self.children),
            grace_s=self.settings.worker_shutdown_grace,
        )
        self._stop.set()
        for child in self.children:
            self._signal(child, signal.SIGTERM)

    @staticmethod
    def _signal(child: _Child, signum: int) -> None:
        if child.proc is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        log.info(
            "supervisor starting worker processes",
            processes=len(self.children),
            burst=self.burst,
            http_ports=[c.port for c in self.children] if self.settings.worker_http_port else None,
        )
        watchers = [asyncio.create_task(self._keep_running(child)) for child in self.children]
        try:
            done: asyncio.Future[list[int]] = asyncio.gather(*watchers)
            stopping: asyncio.Future[bool] = asyncio.ensure_future(self._stop.wait())
            either: list[asyncio.Future[Any]] = [done, stopping]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                await self._drain(done)
            stopping.cancel()
            codes = done.result()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            for child in self.children:  # only if run() itself failed: leave no child behind
                self._signal(child, signal.SIGKILL)
        clean = all(code == 0 for code in codes)
        log.info("supervisor stopped", processes=len(self.children), clean=clean)
        return 0 if clean else 1

    async def _drain(self, done: asyncio.Future[list[int]]) -> None:
        """After a stop request: wait out the grace, then SIGKILL whoever is left."""
        try:
            await asyncio.wait_for(asyncio.shield(done), self._grace)
        except TimeoutError:
            for child in self.children:
                if child.proc is not None and child.proc.returncode is None:
                    log.error(
                        "worker process still running past the grace; killing it",
                        child=child.index,
                        pid=child.proc.pid,
                        grace_s=self.settings.worker_shutdown_grace,
                    )
                    self._signal(child, signal.SIGKILL)
            await done

    async def _keep_running(self, child: _Child) -> int:
        """Start `child` and restart it whenever it ends on its own; its last exit code."""
        delay = BACKOFF_START_S
        while True:
            started = time.monotonic()
            child.proc = await asyncio.create_subprocess_exec(
                *self._command,
                "--child-of",
                str(os.getpid()),
                "--child-index",
                str(child.index),
            )
            child.starts += 1
            log.info(
                "worker process started",
                child=child.index,
                pid=child.proc.pid,
                http_port=child.port or None,
                start=child.starts,
            )
            if self._stop.is_set():  # a stop raced the start: pass it on
                self._signal(child, signal.SIGTERM)
            code = await child.proc.wait()
            child.exit_codes.append(code)
            ran = time.monotonic() - started
            ended = {
                "child": child.index,
                "pid": child.proc.pid,
                "ran_s": round(ran, 1),
                **_how_it_ended(code),
            }
            if self._stop.is_set():
                log.info("worker process stopped", **ended)
                # SIGTERM before it had set its handlers (still starting): it held no job.
                return 0 if code == -signal.SIGTERM else code
            if self.burst and code == 0:
                log.info("worker process finished its burst", **ended)
                return 0
            if ran >= HEALTHY_AFTER_S:
                delay = BACKOFF_START_S
            log.error("worker process died; restarting it", restart_in_s=delay, **ended)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return code
            delay = min(delay * 2, BACKOFF_MAX_S)
