"""An extra job module whose job takes a name the platform's registry already has."""

from __future__ import annotations

from core import JobContext, define

__all__ = ["ping"]


async def _ping(ctx: JobContext) -> str:
    """Not the platform's ping."""
    return "pong"


ping = define(_ping, name="ping")
