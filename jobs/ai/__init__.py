"""AI content jobs through any OpenAI-compatible chat completions API.

`client` talks HTTP and maps failures onto `worker.errors`; `prompts` keeps artist text as
delimited data; `schemas` bounds inputs and outputs; `generate` adds the cache and re-asks;
`jobs` holds the thin job coroutines registered in `jobs/__init__.py`.
"""

from __future__ import annotations

from jobs.ai.client import AI_CLIENT, AIClient, ai_not_configured
from jobs.ai.jobs import ai_email_variants, ai_social_captions, ai_track_tags, ai_week_narrative

__all__ = [
    "AI_CLIENT",
    "AIClient",
    "ai_email_variants",
    "ai_not_configured",
    "ai_social_captions",
    "ai_track_tags",
    "ai_week_narrative",
]
