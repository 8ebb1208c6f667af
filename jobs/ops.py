"""Jobs for smoke tests and operations."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from core.context import JobContext

__all__ = ["ping"]


async def ping(ctx: JobContext, *, message: str = "pong", sleep: float = 0.0) -> dict[str, Any]:
    """Echo `message` with the time, the mode and the process it ran in; `sleep` seconds first.

    The process id tells which worker ran it, as under `run --processes N`."""
    if sleep:
        await asyncio.sleep(sleep)
    return {
        "message": message,
        "at": datetime.now(UTC).isoformat(),
        "mode": ctx.mode,
        "job_id": ctx.job_id,
        "try": ctx.job_try,
        "pid": os.getpid(),
    }
