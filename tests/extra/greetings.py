"""An extra job module as a user writes one: jobs bound at module level with `define(...)`."""

from __future__ import annotations

from core import JobContext, define

__all__ = ["GREETING_JOBS", "greet"]


async def _greet(ctx: JobContext, *, name: str) -> dict[str, str]:
    """Greet someone, saying how the job ran."""
    return {"greeting": f"hello, {name}", "mode": ctx.mode}


async def _shout(ctx: JobContext, *, name: str) -> str:
    """Greet someone loudly."""
    return f"HELLO, {name.upper()}"


greet = define(_greet, name="greet", timeout=10, max_tries=2)
GREETING_JOBS = [define(_shout, name="shout", queue="bulk")]
