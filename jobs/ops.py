"""Jobs for smoke tests and operations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from core.context import JobContext

__all__ = ["ping"]


async def ping(ctx: JobContext, *, message: str = "pong", sleep: float = 0.0) -> dict[str, Any]:
    """Echo `message` with the time and the mode it ran in; `sleep` seconds first, if asked."""
    if sleep:
        await asyncio.sleep(sleep)
    return {
        "message": message,
        "at": datetime.now(UTC).isoformat(),
        "mode": ctx.mode,
        "job_id": ctx.job_id,
        "try": ctx.job_try,
    }
