"""The one registry of jobs. The worker and the inline runner both read `REGISTRY`.

To add a job: write `async def name(ctx: JobContext, *, typed kwargs)` in its family's module
and add `define(name, ...)` below. Duplicate names are refused at import.
"""

from __future__ import annotations

from jobs.ai import ai_email_variants, ai_not_configured, ai_social_captions, ai_track_tags, ai_week_narrative
from jobs.context import JobContext
from jobs.email import send_bulk_email, send_email
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
    "send_bulk_email",
    "send_email",
]

REGISTRY = Registry(
    [
        define(ping, timeout=60, max_tries=3),
        # Transactional mail runs inline when Redis is down (the user is waiting for it) and is
        # durable: recorded in Postgres until sent, so a Redis that loses its data loses no mail.
        # 60 s covers an SMTP conversation at SMTP_TIMEOUT=10 s per step; EMAIL_CLAIM_LEASE outlasts it.
        define(send_email, timeout=60, max_tries=6, durable=True),
        # Up to 5,000 copies: five SendGrid requests, or one SMTP transaction each.
        define(send_bulk_email, timeout=900, max_tries=6, durable=True),
        # AI work is heavy: spooled while Redis is down, inline only if Postgres is down too.
        # Re-asks after unusable output (AI_MAX_OUTPUT_RETRIES) happen within one try, hence the
        # long timeout; tries are for outages, 429s and 5xx, spaced by backoff or Retry-After.
        define(ai_social_captions, timeout=300, max_tries=5, precheck=ai_not_configured, fallback="spool"),
        define(ai_email_variants, timeout=300, max_tries=5, precheck=ai_not_configured, fallback="spool"),
        define(ai_week_narrative, timeout=300, max_tries=5, precheck=ai_not_configured, fallback="spool"),
        define(ai_track_tags, timeout=300, max_tries=5, precheck=ai_not_configured, fallback="spool"),
    ]
)
