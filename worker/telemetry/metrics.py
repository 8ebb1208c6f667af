"""Prometheus metrics for one process (worker or producer), in a registry of its own.

The outcome path (`worker.execution.outcomes`) reports each attempt's start and end; the
producer reports inline fallbacks; the breaker state and the queue depth are read when
Prometheus scrapes, so an idle worker sends Redis nothing for its metrics. A worker's embedded
producer shares the worker's `Metrics`, so its inline fallbacks show in the worker's /metrics.
With OTEL_METRICS_EXPORTER set, each event is also forwarded to `mirror`, the OpenTelemetry
instruments of `worker.telemetry.otel_metrics`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.telemetry.recent import RecentCounts

if TYPE_CHECKING:
    from worker.telemetry.otel_metrics import OtelMetrics

__all__ = ["Metrics"]


def _children(metric: Any) -> Callable[..., Any]:
    """`metric.labels(...)`, remembered per label tuple: the outcome path asks for the same few
    children on every attempt, and prometheus_client validates and locks on each `labels` call
    (about 3 µs; four per attempt). Children are never removed from these metrics."""
    cache: dict[tuple[str, ...], Any] = {}

    def child(*labels: str) -> Any:
        found = cache.get(labels)
        if found is None:
            found = cache[labels] = metric.labels(*labels)
        return found

    return child


DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Counters and histograms of job execution; `render()` gives the text exposition format."""

    def __init__(self, mirror: OtelMetrics | None = None) -> None:
        self.mirror = mirror
        self.registry = CollectorRegistry(auto_describe=True)
        self.recent = RecentCounts()  # what `python -m worker stats` shows
        self.totals: collections.Counter[str] = (
            collections.Counter()
        )  # finished attempts by outcome, for the health key
        self.jobs_finished = Counter(
            "maxbooster_jobs_finished",
            "Job attempts finished, by job, outcome (complete, retry, failed) and mode (queued, inline).",
            ["job", "outcome", "mode"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "maxbooster_job_duration_seconds",
            "Duration of job attempts.",
            ["job", "mode"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.jobs_in_progress = Gauge(
            "maxbooster_jobs_in_progress",
            "Job attempts running now.",
            ["job", "mode"],
            registry=self.registry,
        )
        self.retries = Counter(
            "maxbooster_job_retries",
            "Attempts that ended in a scheduled retry.",
            ["job", "mode"],
            registry=self.registry,
        )
        self.inline_fallbacks = Counter(
            "maxbooster_inline_fallbacks",
            "Jobs run inline because Redis was unusable.",
            ["job"],
            registry=self.registry,
        )
        self.rate_limited_jobs = Counter(
            "maxbooster_rate_limited",
            "Claimed jobs sent back to their queue to wait for their turn under a rate limit.",
            ["job"],
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "maxbooster_redis_breaker_open", "1 while Redis is considered unusable.", registry=self.registry
        )
        self.queue_depth = Gauge(
            "maxbooster_queue_depth", "Jobs waiting in the queue (read at scrape time).", ["queue"],
            registry=self.registry,
        )  # fmt: skip

        self._in_progress = _children(self.jobs_in_progress)
        self._finished = _children(self.jobs_finished)
        self._duration = _children(self.job_duration)
        self._retries = _children(self.retries)

    def attempt_started(self, job: str, mode: str) -> None:
        self._in_progress(job, mode).inc()
        self.recent.running += 1
        if self.mirror is not None:
            self.mirror.attempt_started(job, mode)

    def attempt_finished(
        self, job: str, mode: str, outcome: str, duration_s: float, *, started: bool = True
    ) -> None:
        """`started=False` for an attempt refused before it ran (an undecodable record, say)."""
        if started:
            self._in_progress(job, mode).dec()
            self.recent.running -= 1
        if outcome != "interrupted":
            self.recent.add(job, outcome)
        if outcome in ("complete", "failed", "retry"):
            self.totals[outcome] += 1
        self._finished(job, outcome, mode).inc()
        self._duration(job, mode).observe(duration_s)
        if outcome == "retry":
            self._retries(job, mode).inc()
        if self.mirror is not None:
            self.mirror.attempt_finished(job, mode, outcome, duration_s, started)

    def rate_limited(self, job: str) -> None:
        self.rate_limited_jobs.labels(job).inc()
        if self.mirror is not None:
            self.mirror.rate_limited(job)

    def inline_fallback(self, job: str) -> None:
        self.inline_fallbacks.labels(job).inc()
        if self.mirror is not None:
            self.mirror.inline_fallback(job)

    def watch_breaker(self, is_open: Callable[[], bool]) -> None:
        self.breaker_open.set_function(lambda: 1.0 if is_open() else 0.0)
        if self.mirror is not None:
            self.mirror.watch_breaker(is_open)

    def render(self) -> bytes:
        return generate_latest(self.registry)
