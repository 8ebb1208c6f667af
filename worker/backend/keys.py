"""Every Redis key name in one place.

Jobs keep arq's layout (`arq:job:<id>`, `arq:in-progress:<id>`, `arq:retry:<id>`,
`arq:result:<id>`, `<queue>:health-check`, the queue itself a sorted set), so arq's tools read
our jobs; a test holds these prefixes equal to arq's own constants. The runner's own keys live
under `mb:`, so ACL rules can grant exactly `~arq:* ~mb:*`.
"""

from __future__ import annotations

__all__ = [
    "CACHE_PREFIX",
    "CANCEL_PREFIX",
    "ENDED_PREFIX",
    "IN_PROGRESS_PREFIX",
    "JOB_PREFIX",
    "MAX_JOB_ID_LENGTH",
    "PROGRESS_PREFIX",
    "RESERVED_PREFIX",
    "RESULT_PREFIX",
    "RETRY_PREFIX",
    "WORKERS_KEY",
    "cache_key",
    "health_check_key",
    "in_progress_key",
    "job_key",
    "paused_key",
    "plugin_key",
    "quarantine_key",
    "rate_key",
    "result_key",
    "retry_key",
    "running_key",
    "schedule_key",
    "wake_key",
    "worker_stats_key",
]

JOB_PREFIX = "arq:job:"
IN_PROGRESS_PREFIX = "arq:in-progress:"
RESULT_PREFIX = "arq:result:"
RETRY_PREFIX = "arq:retry:"
_HEALTH_SUFFIX = ":health-check"

CACHE_PREFIX = "mb:cache:"
# Per job: how many of its tries ended in a retry (the claims beyond were interrupted).
ENDED_PREFIX = "mb:ended:"
# The longest job id the runner accepts; the claim quarantines longer ones (see `JOB_ID_RULE`).
MAX_JOB_ID_LENGTH = 200
# Sorted set: worker id -> time of its last snapshot (ms), so readers find workers without SCAN.
WORKERS_KEY = "mb:workers"
# Per running job: a cancel request its worker passes on to the job.
CANCEL_PREFIX = "mb:cancel:"
# Per running job: its latest progress report (JSON), written a few times a second at most.
PROGRESS_PREFIX = "mb:progress:"
# Per job: the start time a rate limit reserved for it (ms).
RESERVED_PREFIX = "mb:reserved:"


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def result_key(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def in_progress_key(job_id: str) -> str:
    return IN_PROGRESS_PREFIX + job_id


def retry_key(job_id: str) -> str:
    return RETRY_PREFIX + job_id


def health_check_key(queue: str) -> str:
    return queue + _HEALTH_SUFFIX


def wake_key(queue: str) -> str:
    """Touched by every enqueue; idle workers block on it (BZPOPMIN) instead of polling."""
    return queue + ":wake"


def quarantine_key(queue: str) -> str:
    """List of queue entries the claim set aside (raw id, newline, score), the latest 1,000."""
    return f"mb:quarantine:{queue}"


def paused_key(queue: str) -> str:
    """Exists while queue `queue` is paused: workers claim nothing from it."""
    return f"mb:paused:{queue}"


def running_key(queue: str) -> str:
    """A capped queue's running jobs across workers (id -> lock expiry ms), for its global cap."""
    return f"mb:running:{queue}"


def rate_key(namespace: str, limit: str) -> str:
    """The state of rate limit `limit` (its theoretical arrival time), per QUEUE_NAME."""
    return f"mb:rate:{namespace}:{limit}"


def cache_key(key: str) -> str:
    """The Redis key for a `deps.cache` entry; jobs name entries like `ai:<digest>`."""
    return CACHE_PREFIX + key


def schedule_key(queue: str, job: str) -> str:
    """The due time (epoch seconds) of the latest scheduled run of `job` that was queued."""
    return f"mb:schedule:{queue}:{job}"


def worker_stats_key(worker_id: str) -> str:
    return f"mb:stats:worker:{worker_id}"


def plugin_key(namespace: str, queue: str, name: str) -> str:
    """A key of a job family's plug-in (e.g. the analytics event list), per queue so a producer
    and a worker sharing QUEUE_NAME find each other."""
    return f"mb:{namespace}:{queue}:{name}"
