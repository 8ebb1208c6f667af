"""The one registry of jobs. The worker and the inline runner both read `REGISTRY`.

To add a job: write `async def name(ctx: JobContext, *, typed kwargs)` in its family's module
and add `define(name, ...)` below. Duplicate names are refused at import.
"""

from __future__ import annotations

from jobs.context import JobContext
from jobs.email import send_bulk_email, send_email
from jobs.ops import ping
from jobs.registry import JobDefinition, Registry, define

__all__ = [
    "REGISTRY",
    "JobContext",
    "JobDefinition",
    "Registry",
    "define",
    "ping",
    "send_bulk_email",
    "send_email",
]

REGISTRY = Registry(
    [
        define(ping, timeout=60, max_tries=3),
        # 60 s covers an SMTP conversation at SMTP_TIMEOUT=10 s per step; EMAIL_CLAIM_LEASE outlasts it.
        define(send_email, timeout=60, max_tries=6),
        # Up to 5,000 copies: five SendGrid requests, or one SMTP transaction each.
        define(send_bulk_email, timeout=900, max_tries=6),
    ]
)
