"""CLI for the Makefile: provision REDIS_URL / DATABASE_URL, starting throwaway servers if needed.

    eval "$(python -m devservices env)"    # prints `export VAR=...` lines on stdout
    python -m devservices stop             # stops the throwaway servers recorded in .devservices/
    python -m devservices status           # shows what is recorded there
    python -m devservices note             # one line on the throwaway servers still running, if any
    python -m devservices clean            # stop them, then remove .devservices/ (--tmp-copies: and
                                           # unused copies of a pip-shipped PostgreSQL in /tmp)

For each variable: already set in the environment (even to "") -> left alone, nothing
printed; else the default URL answers -> use it; else reuse a throwaway server recorded in the
state dir if it still answers; else start one detached (it outlives this command) and record
its pid/port/dir. Human messages go to stderr; stdout carries only the export lines.

Postgres: the URL names the runner's own database (`maxbooster_jobs` by default). It is created
when missing, on a throwaway server and on a server that answers at the default address without
a password (a local development server): a database of its own is what keeps the runner's
tables out of a maintenance or application database.

Only the standard library is used, so `stop` and `clean` work before (or without) an install.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ._process import ServerProcess, process_start_time
from .postgres import (
    PostgresServer,
    ensure_database,
    os_user_for_postgres,
    pg_url_probe,
    user_can_reach,
    with_database,
)
from .redis import RedisServer, redis_url_ping

__all__ = ["DEFAULT_DATABASE_URL", "DEFAULT_REDIS_URL", "main"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# The runner's own database (settings.DEFAULT_DATABASE; not imported: this runs before installs).
DEFAULT_DATABASE_URL = "postgresql://postgres@localhost:5432/maxbooster_jobs"
_MARKER = ".devservices-owned"  # written into every dir we create, checked before deleting it


@dataclass(frozen=True)
class _Service:
    key: str  # state file name and short id
    label: str  # for messages
    env_var: str
    probe: Callable[[str], bool]
    signal: signal.Signals  # graceful stop signal for a recorded pid


_REDIS = _Service("redis", "Redis", "REDIS_URL", redis_url_ping, signal.SIGTERM)
_POSTGRES = _Service("postgres", "Postgres", "DATABASE_URL", pg_url_probe, signal.SIGINT)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _host_port(url: str, default_port: int) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """Serialise concurrent `make` invocations so they do not each start a server."""
    os.makedirs(state_dir, exist_ok=True)
    ignore = os.path.join(state_dir, ".gitignore")
    if not os.path.exists(ignore):
        with open(ignore, "w") as fh:
            fh.write("# throwaway dev servers (python -m devservices)\n*\n")
    with open(os.path.join(state_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _state_path(state_dir: str, svc: _Service) -> str:
    return os.path.join(state_dir, f"{svc.key}.json")


def _read_state(state_dir: str, svc: _Service) -> dict[str, Any] | None:
    try:
        with open(_state_path(state_dir, svc)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_ours(state: dict[str, Any]) -> bool:
    """The recorded pid is still the process we started (pid + kernel start time match)."""
    pid, started = state.get("pid"), state.get("start_time")
    if not isinstance(pid, int) or pid <= 0:
        return False
    current = process_start_time(pid)
    if current is None:
        return False
    return started is None or current == started


def _remove_owned_dir(path: object) -> None:
    if isinstance(path, str) and os.path.isfile(os.path.join(path, _MARKER)):
        shutil.rmtree(path, ignore_errors=True)


def _forget(state_dir: str, svc: _Service, state: dict[str, Any]) -> None:
    for key in ("base_dir", "socket_dir"):
        _remove_owned_dir(state.get(key))
    with contextlib.suppress(FileNotFoundError):
        os.remove(_state_path(state_dir, svc))


def _wait_gone(state: dict[str, Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_ours(state):
            return True
        time.sleep(0.05)
    return not _is_ours(state)


def _stop_recorded(state_dir: str, svc: _Service, state: dict[str, Any]) -> str:
    """Stop the recorded server if it is still ours; returns what happened."""
    pid = int(state.get("pid", 0))
    outcome = "was not running"
    if _is_ours(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, svc.signal)
        outcome = "stopped"
        if not _wait_gone(state, 15.0):
            # Verified as ours just above, and a session leader, so its group is ours too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(state, 5.0)
            outcome = "killed"
    _forget(state_dir, svc, state)
    return outcome


def _new_base_dir(state_dir: str, svc: _Service) -> str:
    """A fresh dir under the state dir, or under /tmp when Postgres' account cannot reach it."""
    base = os.path.join(state_dir, svc.key)
    if os.path.exists(base):
        _remove_owned_dir(base)
    if os.path.exists(base):
        base = tempfile.mkdtemp(prefix=f"{svc.key}-", dir=state_dir)
    if svc is _POSTGRES:
        who = os_user_for_postgres()
        if who is not None and not user_can_reach(state_dir, who):
            base = tempfile.mkdtemp(prefix="devservices-postgres-")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, _MARKER), "w") as fh:
        fh.write("created by python -m devservices; removed by `python -m devservices stop`\n")
    return base


def _database_of(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or "postgres"


def _postgres_url(server_url: str, database: str) -> str | None:
    """`server_url` naming `database`, created if missing; None if that is not possible."""
    url = with_database(server_url, database)
    return url if ensure_database(url) in ("exists", "created") else None


def _start_detached(state_dir: str, svc: _Service, database: str) -> str:
    base_dir = _new_base_dir(state_dir, svc)
    server: ServerProcess
    if svc is _REDIS:
        server = RedisServer(base_dir=base_dir, detached=True)
    else:
        server = PostgresServer(base_dir=base_dir, detached=True)
    try:
        server.start()
    except BaseException:
        _remove_owned_dir(base_dir)
        raise
    assert server.pid is not None
    url = server.url
    if isinstance(server, PostgresServer):
        created = ensure_database(with_database(url, database))
        if created not in ("exists", "created"):
            server.stop()
            _remove_owned_dir(base_dir)
            raise RuntimeError(f"could not create database {database!r} on the new server: {created}")
        url = with_database(url, database)
    socket_dir = server.socket_dir if isinstance(server, PostgresServer) else None
    if socket_dir is not None and not socket_dir.startswith(base_dir + os.sep):
        # A socket dir outside base_dir (long paths) needs its own marker to be removable.
        with open(os.path.join(socket_dir, _MARKER), "w") as fh:
            fh.write("created by python -m devservices\n")
    state = {
        "pid": server.pid,
        "start_time": process_start_time(server.pid),
        "port": server.port,
        "url": url,
        "base_dir": base_dir,
        "log": server.log_path,
        "socket_dir": socket_dir,
        "started_at": time.time(),
    }
    tmp = _state_path(state_dir, svc) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, _state_path(state_dir, svc))
    return url


def _provision(svc: _Service, default_url: str, state_dir: str, default_port: int) -> str | None:
    """URL to export for one service, or None when the user's own setting must be kept."""
    if svc.env_var in os.environ:
        _say(f"{svc.label}: {svc.env_var} is already set, leaving it alone")
        return None
    database = _database_of(default_url)
    if svc is _POSTGRES:
        found = ensure_database(default_url)
        if found in ("exists", "created"):
            made = f" (created the database {database!r} there)" if found == "created" else ""
            _say(f"{svc.label}: using {default_url}{made}")
            return default_url
    elif svc.probe(default_url):
        _say(f"{svc.label}: using {default_url}")
        return default_url
    where = _host_port(default_url, default_port)
    state = _read_state(state_dir, svc)
    if state is not None:
        url = state.get("url")
        if svc is _POSTGRES and isinstance(url, str) and _is_ours(state):
            url = _postgres_url(url, database)  # created if missing (a state from an older version)
        if _is_ours(state) and isinstance(url, str) and svc.probe(url):
            _say(
                f"{svc.label}: nothing on {where}, reusing the throwaway server at {url} (pid {state['pid']})"
            )
            return url
        _stop_recorded(state_dir, svc, state)  # recorded but dead or unresponsive: clear it out
    url = _start_detached(state_dir, svc, database)
    binary = "redis-server" if svc is _REDIS else "postgres"
    port = urlsplit(url).port
    _say(f"{svc.label}: nothing on {where}, started a throwaway {binary} on 127.0.0.1:{port}")
    return url


def _cmd_env(args: argparse.Namespace) -> int:
    exports: list[str] = []
    with _locked(args.state_dir):
        for svc, default, port in (
            (_REDIS, args.default_redis_url, 6379),
            (_POSTGRES, args.default_database_url, 5432),
        ):
            try:
                url = _provision(svc, default, args.state_dir, port)
            except RuntimeError as exc:
                _say(f"{svc.label}: could not provide a server: {exc}")
                return 1
            if url is not None:
                exports.append(f"export {svc.env_var}={shlex.quote(url)}")
    for line in exports:
        print(line)
    return 0


def _stop_all(state_dir: str) -> int:
    """Stop every throwaway server recorded in `state_dir`, saying what happened to each."""
    stopped = 0
    with _locked(state_dir):
        for svc in (_REDIS, _POSTGRES):
            state = _read_state(state_dir, svc)
            if state is None:
                continue
            outcome = _stop_recorded(state_dir, svc, state)
            _say(f"{svc.label}: throwaway server {state.get('url')} (pid {state.get('pid')}) {outcome}")
            stopped += 1
    return stopped


def _cmd_stop(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.state_dir):
        _say(f"devservices: no throwaway servers recorded ({args.state_dir} does not exist), nothing to stop")
        return 0
    if _stop_all(args.state_dir) == 0:
        _say(f"devservices: no throwaway servers recorded in {args.state_dir}, nothing to stop")
    return 0


def _running(state_dir: str) -> list[tuple[_Service, dict[str, Any]]]:
    found = []
    for svc in (_REDIS, _POSTGRES):
        state = _read_state(state_dir, svc)
        if state is not None and _is_ours(state):
            found.append((svc, state))
    return found


def _cmd_note(args: argparse.Namespace) -> int:
    running = _running(args.state_dir)
    if running:
        servers = " and ".join(
            f"{svc.label} at {state.get('url')} (pid {state.get('pid')})" for svc, state in running
        )
        verb, them, their = ("keeps", "it", "its") if len(running) == 1 else ("keep", "them", "their")
        _say(
            f"Note: the throwaway {servers} {verb} running for the next `make run` / `make test`; "
            f"stop {them} with `make stop-services` (`make clean` also removes {their} data)."
        )
    return 0


def _in_use(path: str) -> bool:
    """True when a running process executes a binary under `path` (checked through /proc)."""
    prefix = os.path.realpath(path) + os.sep
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/exe").startswith(prefix):
                    return True
    return False


def _cmd_clean(args: argparse.Namespace) -> int:
    if os.path.isdir(args.state_dir):
        _stop_all(args.state_dir)
        shutil.rmtree(args.state_dir, ignore_errors=True)
        _say(f"devservices: removed {args.state_dir}")
    if not args.tmp_copies:
        return 0
    # Copies of a pip-shipped PostgreSQL made readable for the account it runs as (postgres.py);
    # shared by checkouts, so only those no running process executes.
    for copy in sorted(glob.glob(os.path.join(tempfile.gettempdir(), "devservices-pginstall-*"))):
        if os.path.isdir(copy) and not _in_use(copy):
            shutil.rmtree(copy, ignore_errors=True)
            _say(f"devservices: removed {copy}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    # Informational output is this command's result, so it goes to stdout.
    for svc in (_REDIS, _POSTGRES):
        state = _read_state(args.state_dir, svc)
        if state is None:
            print(f"{svc.label}: no throwaway server recorded")
        else:
            alive = "running" if _is_ours(state) else "not running"
            print(f"{svc.label}: {state.get('url')} pid {state.get('pid')} {alive} (log {state.get('log')})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devservices", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=".devservices", help="where throwaway servers are recorded")
    env = sub.add_parser("env", parents=[common], help="print export lines for REDIS_URL and DATABASE_URL")
    env.add_argument("--default-redis-url", default=DEFAULT_REDIS_URL)
    env.add_argument("--default-database-url", default=DEFAULT_DATABASE_URL)
    env.set_defaults(func=_cmd_env)
    stop = sub.add_parser("stop", parents=[common], help="stop the throwaway servers recorded there")
    stop.set_defaults(func=_cmd_stop)
    status = sub.add_parser("status", parents=[common], help="show the throwaway servers recorded")
    status.set_defaults(func=_cmd_status)
    note = sub.add_parser("note", parents=[common], help="say which throwaway servers keep running")
    note.set_defaults(func=_cmd_note)
    clean = sub.add_parser("clean", parents=[common], help="stop them and remove everything devservices made")
    clean.add_argument(
        "--tmp-copies", action="store_true", help="also remove unused PostgreSQL copies in the temp dir"
    )
    clean.set_defaults(func=_cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.state_dir = os.path.abspath(args.state_dir)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
