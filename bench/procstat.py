"""A process's resident memory and CPU time from /proc, for workers of any language, and how a
benchmark stops one."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

__all__ = ["cpu_seconds", "rss_mib", "stop"]

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system time of the process, all its threads (Node's GC and I/O threads count)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def stop(
    proc: asyncio.subprocess.Process, signum: int | None = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Send `signum` (None: the caller already asked it to end) and wait; kill what is still
    running after `timeout` seconds."""
    if signum is not None and proc.returncode is None:
        proc.send_signal(signum)
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
