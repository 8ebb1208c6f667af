"""Prometheus metrics for one process (worker or producer), in a registry of its own.

The outcome path (`worker.execution.outcomes`) reports each attempt's start and end; the
producer reports inline fallbacks; the breaker state and the queue depth are read when
Prometheus scrapes, so an idle worker sends Redis nothing for its metrics. A worker's embedded
producer shares the worker's `Metrics`, so its inline fallbacks show in the worker's /metrics.
With OTEL_METRICS_EXPORTER set, each event is also forwarded to `mirror`, the OpenTelemetry
instruments of `worker.telemetry.otel_metrics`.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from worker.telemetry.recent import RecentCounts

if TYPE_CHECKING:
    from worker.telemetry.otel_metrics import OtelMetrics

__all__ = ["Metrics"]


DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The `le` labels as prometheus_client writes them (1 is "1.0"; the last bucket is "+Inf").
_BUCKET_LABELS = (*(repr(float(bound)) for bound in DURATION_BUCKETS), "+Inf")


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0


class _AttemptCounts:
    """The per-attempt metrics as plain numbers, turned into Prometheus samples when scraped.

    Every attempt touches four series; through prometheus_client's metric objects that was a
    lock, a label check and a child lookup each time, about a tenth of a draining worker's CPU.
    Here an attempt costs a few dict updates on the event-loop thread; the scrape (from the
    health server's thread) reads copies taken in one step each, so it never sees a dict change
    size under it.
    """

    def __init__(self) -> None:
        self.in_progress: dict[tuple[str, str], int] = {}
        self.finished: dict[tuple[str, str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for (job, mode), running in list(self.in_progress.items()):
            families[0].add_metric([job, mode], running)
        for (job, outcome, mode), count in list(self.finished.items()):
            families[1].add_metric([job, outcome, mode], count)
        for (job, mode), count in list(self.retries.items()):
            families[2].add_metric([job, mode], count)
        for (job, mode), hist in list(self.durations.items()):
            counts, cumulative, buckets = list(hist.counts), 0, []
            for label, count in zip(_BUCKET_LABELS, counts, strict=True):
                cumulative += count
                buckets.append((label, cumulative))
            families[3].add_metric([job, mode], buckets, hist.total)
        yield from families

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                "maxbooster_jobs_in_progress", "Job attempts running now.", labels=["job", "mode"]
            ),
            CounterMetricFamily(
                "maxbooster_jobs_finished",
                "Job attempts finished, by job, outcome (complete, retry, failed) and mode (queued, inline).",
                labels=["job", "outcome", "mode"],
            ),
            CounterMetricFamily(
                "maxbooster_job_retries",
                "Attempts that ended in a scheduled retry.",
                labels=["job", "mode"],
            ),
            HistogramMetricFamily(
                "maxbooster_job_duration_seconds", "Duration of job attempts.", labels=["job", "mode"]
            ),
        )


class Metrics:
    """Counters and histograms of job execution; `render()` gives the text exposition format."""

    def __init__(self, mirror: OtelMetrics | None = None) -> None:
        self.mirror = mirror
        self.registry = CollectorRegistry(auto_describe=True)
        self.recent = RecentCounts()  # what `python -m worker stats` shows
        self.totals: collections.Counter[str] = (
            collections.Counter()
        )  # finished attempts by outcome, for the health key
        # Job attempts finished, their durations, running attempts and retries (see `_AttemptCounts`).
        self.attempts = _AttemptCounts()
        self.registry.register(self.attempts)
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

    def attempt_started(self, job: str, mode: str) -> None:
        running = self.attempts.in_progress
        running[job, mode] = running.get((job, mode), 0) + 1
        self.recent.running += 1
        if self.mirror is not None:
            self.mirror.attempt_started(job, mode)

    def attempt_finished(
        self, job: str, mode: str, outcome: str, duration_s: float, *, started: bool = True
    ) -> None:
        """`started=False` for an attempt refused before it ran (an undecodable record, say)."""
        counts = self.attempts
        if started:
            counts.in_progress[job, mode] -= 1
            self.recent.running -= 1
        if outcome != "interrupted":
            self.recent.add(job, outcome)
        if outcome in ("complete", "failed", "retry"):
            self.totals[outcome] += 1
        finished = counts.finished
        finished[job, outcome, mode] = finished.get((job, outcome, mode), 0) + 1
        hist = counts.durations.get((job, mode))
        if hist is None:
            hist = counts.durations[job, mode] = _Histogram()
        hist.counts[bisect.bisect_left(DURATION_BUCKETS, duration_s)] += 1
        hist.total += duration_s
        if outcome == "retry":
            counts.retries[job, mode] = counts.retries.get((job, mode), 0) + 1
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
