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
    "health_check_key",
    "in_progress_key",
    "job_key",
    "result_key",
    "retry_key",
    "wake_key",
]


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


def wake_key(queue: str) -> str:
    """Touched by every enqueue; idle workers block on it (BZPOPMIN) instead of polling."""
    return queue + ":wake"
