"""An extra job module that forgot to bind its jobs."""

from __future__ import annotations

from core import JobContext

__all__: list[str] = []


async def lonely(ctx: JobContext) -> None:
    """Never defined."""
