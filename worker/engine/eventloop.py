"""The worker's event loop: asyncio's by default, uvloop's with WORKER_EVENT_LOOP=uvloop.

A draining worker is bound by its one event-loop thread, and uvloop's loop (libuv, in C) spends
less of it on each callback, socket read and task switch. asyncio stays the default: it is the
loop every test runs, and jobs that rely on loop details (signal handling, subprocesses) behave
as documented by Python. uvloop is a dependency already (the HTTP API runs on it); it is imported
only when chosen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from settings import Settings

__all__ = ["run_until_done"]


def run_until_done(main: Coroutine[Any, Any, int], settings: Settings) -> int:
    """Run the worker's coroutine on the configured loop and return its exit code."""
    if settings.worker_event_loop == "uvloop":
        import uvloop  # only when chosen: not every process needs it

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
