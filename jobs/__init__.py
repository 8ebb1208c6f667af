"""The one registry of jobs. The worker and the inline runner both read `REGISTRY`.

To add a job: write `async def name(ctx: JobContext, *, typed kwargs)` in its family's module
and add `define(name, ...)` below. Duplicate names are refused at import.
"""

from __future__ import annotations

from jobs.context import JobContext
from jobs.ops import ping
from jobs.registry import JobDefinition, Registry, define

__all__ = ["REGISTRY", "JobContext", "JobDefinition", "Registry", "define", "ping"]

REGISTRY = Registry(
    [
        define(ping, timeout=60, max_tries=3),
    ]
)
