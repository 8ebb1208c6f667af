"""The AI jobs. Each returns `{"output", "model", "cached", "requests", "usage"}` and nothing else.

They only generate: no email is sent and nothing is written to a database here, so a prompt
injection can at worst spoil one result, which the caller (who decides what to do with it)
sees in full. The artist's text arrives as typed, length-limited keyword arguments.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import Field

from core.context import JobContext
from jobs.ai import prompts
from jobs.ai.generate import generate
from jobs.ai.schemas import (
    NETWORKS,
    ArtistName,
    EmailPurpose,
    Highlights,
    LongText,
    Metrics,
    Network,
    ShortText,
    Tone,
)

__all__ = ["ai_email_variants", "ai_social_captions", "ai_track_tags", "ai_week_narrative"]


async def ai_social_captions(
    ctx: JobContext,
    *,
    artist_name: ArtistName,
    release_title: ShortText,
    description: LongText = "",
    networks: Annotated[list[Network], Field(min_length=1)] | None = None,
    tone: Tone = "excited",
) -> dict[str, Any]:
    """Captions announcing a release, one per social network (all five by default)."""
    chosen = [n for n in NETWORKS if n in set(networks or NETWORKS)]
    prompt = prompts.social_captions(
        artist_name=artist_name,
        release_title=release_title,
        description=description,
        networks=chosen,
        tone=tone,
    )
    return await generate(ctx, prompt)


async def ai_email_variants(
    ctx: JobContext,
    *,
    artist_name: ArtistName,
    purpose: EmailPurpose,
    brief: LongText,
    variants: Annotated[int, Field(ge=1, le=5)] = 3,
) -> dict[str, Any]:
    """Email subject and plain-text body variants for A/B tests; the caller sends them, or not."""
    prompt = prompts.email_variants(artist_name=artist_name, purpose=purpose, brief=brief, count=variants)
    return await generate(ctx, prompt)


async def ai_week_narrative(
    ctx: JobContext,
    *,
    artist_name: ArtistName,
    week_start: date,
    metrics: Metrics,
    highlights: Highlights | None = None,
) -> dict[str, Any]:
    """A headline and a few sentences on an artist's week, for the insights email."""
    prompt = prompts.week_narrative(
        artist_name=artist_name, week_start=week_start, metrics=metrics, highlights=highlights or []
    )
    return await generate(ctx, prompt)


async def ai_track_tags(
    ctx: JobContext,
    *,
    title: ShortText,
    description: LongText,
    artist_name: ArtistName | None = None,
) -> dict[str, Any]:
    """Genre and mood tags for a track from its description."""
    prompt = prompts.track_tags(title=title, description=description, artist_name=artist_name or "")
    return await generate(ctx, prompt)
