"""The one registry of jobs. The worker and the inline runner both read `REGISTRY`.

To add a job: write `async def name(ctx: JobContext, *, typed kwargs)` in its family's module
and add `define(name, ...)` below. Duplicate names are refused at import.
"""

from __future__ import annotations

from jobs.ai import ai_email_variants, ai_not_configured, ai_social_captions, ai_track_tags, ai_week_narrative
from jobs.context import JobContext
from jobs.ops import ping
from jobs.registry import JobDefinition, Registry, define

__all__ = [
    "REGISTRY",
    "JobContext",
    "JobDefinition",
    "Registry",
    "ai_email_variants",
    "ai_social_captions",
    "ai_track_tags",
    "ai_week_narrative",
    "define",
    "ping",
]

# AI jobs: re-asks after unusable output (AI_MAX_OUTPUT_RETRIES) happen within one try, hence
# the long timeout; tries are for outages, 429s and 5xx, spaced by backoff or Retry-After.
REGISTRY = Registry(
    [
        define(ping, timeout=60, max_tries=3),
        define(ai_social_captions, timeout=300, max_tries=5, precheck=ai_not_configured),
        define(ai_email_variants, timeout=300, max_tries=5, precheck=ai_not_configured),
        define(ai_week_narrative, timeout=300, max_tries=5, precheck=ai_not_configured),
        define(ai_track_tags, timeout=300, max_tries=5, precheck=ai_not_configured),
    ]
)
