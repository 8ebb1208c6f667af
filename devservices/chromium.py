"""Chromium for the browser tests (`make test-browser`), from the distribution, never downloaded
by Playwright (its browser download is blocked on these machines; Playwright drives any
Chromium through `executable_path`).

    python -m devservices.chromium ensure   # print the path; install with apt when missing and root

`CHROMIUM_PATH` names a binary to use instead. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

__all__ = ["CHROMIUM_ARGS", "ensure_chromium", "find_chromium"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags for a headless run in a closed network: no background connections Chromium would try.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_HOW = (
    "install Chromium (Debian/Ubuntu: sudo apt-get install chromium; Fedora: sudo dnf install chromium), "
    "or set CHROMIUM_PATH to a Chromium or Chrome binary"
)


def find_chromium() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> str:
    """The Chromium binary; installed with apt-get when missing and this process may (root).
    Raises RuntimeError saying what to install otherwise."""
    found = find_chromium()
    if found is not None:
        return found
    if os.environ.get("CHROMIUM_PATH"):
        raise RuntimeError(f"CHROMIUM_PATH={os.environ['CHROMIUM_PATH']} is not an executable file; {_HOW}")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"no Chromium found on PATH; {_HOW}")
    print("Chromium not found: installing it with apt-get (Debian's chromium package)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed; {_HOW}")
    found = find_chromium()
    if found is None:
        raise RuntimeError(f"apt-get installed chromium but no binary is on PATH; {_HOW}")
    return found


def main(argv: list[str]) -> int:
    if argv != ["ensure"]:
        print("usage: python -m devservices.chromium ensure", file=sys.stderr)
        return 2
    try:
        print(ensure_chromium())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
