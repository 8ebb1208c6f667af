"""Every Redis key name in one place. We keep arq's key layout so arq's tools read our jobs."""

from __future__ import annotations

from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

__all__ = [
    "CACHE_PREFIX",
    "WORKER_STATS_PATTERN",
    "analytics_batch_key",
    "analytics_batch_prefix",
    "analytics_dead_key",
    "analytics_events_key",
    "analytics_inflight_key",
    "cache_key",
    "health_check_key",
    "in_progress_key",
    "job_key",
    "result_key",
    "retry_key",
    "schedule_key",
    "wake_key",
    "worker_stats_key",
]


# Our own keys live under `mb:`, apart from arq's `arq:` keys.
CACHE_PREFIX = "mb:cache:"


def cache_key(key: str) -> str:
    """The Redis key for a `deps.cache` entry; jobs name entries like `ai:<digest>`."""
    return CACHE_PREFIX + key


def job_key(job_id: str) -> str:
    return job_key_prefix + job_id


def result_key(job_id: str) -> str:
    return result_key_prefix + job_id


def in_progress_key(job_id: str) -> str:
    return in_progress_key_prefix + job_id


def retry_key(job_id: str) -> str:
    return retry_key_prefix + job_id


def health_check_key(queue: str) -> str:
    return queue + health_check_key_suffix


# Our own keys live under `mb:` so ACL rules can grant exactly `arq:*` and `mb:*`.
WORKER_STATS_PATTERN = "mb:stats:worker:*"


def schedule_key(queue: str, job: str) -> str:
    """The due time (epoch seconds) of the latest scheduled run of `job` that was queued."""
    return f"mb:schedule:{queue}:{job}"


def worker_stats_key(worker_id: str) -> str:
    return f"mb:stats:worker:{worker_id}"


# Analytics event buffer, per queue so a producer and a worker sharing QUEUE_NAME find each
# other. Our own keys live under `mb:`.


def analytics_events_key(queue: str) -> str:
    """List of JSON chunks of events waiting to be written to Postgres."""
    return f"mb:analytics:{queue}:events"


def analytics_inflight_key(queue: str) -> str:
    """Sorted set: batch id -> lease deadline (ms) of batches a flush has claimed."""
    return f"mb:analytics:{queue}:inflight"


def analytics_batch_prefix(queue: str) -> str:
    return f"mb:analytics:{queue}:batch:"


def analytics_batch_key(queue: str, batch_id: str) -> str:
    """List holding the chunks of one claimed batch until its commit is acknowledged."""
    return analytics_batch_prefix(queue) + batch_id


def analytics_dead_key(queue: str) -> str:
    """List of chunks that could not be decoded or stored, kept for inspection."""
    return f"mb:analytics:{queue}:dead"


def wake_key(queue: str) -> str:
    """Touched by every enqueue; idle workers block on it (BZPOPMIN) instead of polling."""
    return queue + ":wake"
