"""OpenTelemetry metrics mirroring the Prometheus ones, for a platform that collects metrics over
OTLP rather than by scraping /metrics. Off unless OTEL_METRICS_EXPORTER=otlp (or console).

`Metrics` (worker.telemetry.metrics) forwards each event here when a mirror is set:

    maxbooster.jobs.finished       counter   job, outcome, mode
    maxbooster.job.duration        histogram job, mode (seconds; the Prometheus buckets)
    maxbooster.jobs.in_progress    up-down   job, mode
    maxbooster.job.retries         counter   job, mode
    maxbooster.inline_fallbacks    counter   job
    maxbooster.rate_limited        counter   job
    maxbooster.redis.breaker_open  gauge     (1 while Redis is considered unusable)

The queue depth stays Prometheus-only: it is read from Redis when scraped, and an export thread
must not send Redis commands. `opentelemetry` is imported only when this is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from settings import Settings
from worker.telemetry.tracing import shut_down_within

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider

__all__ = ["OtelMetrics"]


class OtelMetrics:
    """One process's OTel instruments, exported periodically (OTEL_METRIC_EXPORT_INTERVAL)."""

    def __init__(self, settings: Settings, buckets: Sequence[float]) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource

        exporter: MetricExporter
        if settings.otel_metrics_exporter == "console":
            exporter = ConsoleMetricExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(
                endpoint=settings.otlp_url("metrics"), headers=settings.otlp_headers or None
            )
        self._provider: MeterProvider = MeterProvider(
            [PeriodicExportingMetricReader(exporter)],
            resource=Resource.create({"service.name": settings.otel_service_name}),
            shutdown_on_exit=False,
        )
        meter = self._provider.get_meter("maxbooster-jobs")
        self._finished = meter.create_counter(
            "maxbooster.jobs.finished", "{attempt}", "Job attempts finished, by job, outcome and mode."
        )
        self._duration = meter.create_histogram(
            "maxbooster.job.duration",
            "s",
            "Duration of job attempts.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self._in_progress = meter.create_up_down_counter(
            "maxbooster.jobs.in_progress", "{attempt}", "Job attempts running now."
        )
        self._retries = meter.create_counter(
            "maxbooster.job.retries", "{attempt}", "Attempts that ended in a scheduled retry."
        )
        self._inline = meter.create_counter(
            "maxbooster.inline_fallbacks", "{job}", "Jobs run inline because Redis was unusable."
        )
        self._rate_limited = meter.create_counter(
            "maxbooster.rate_limited", "{job}", "Claimed jobs sent back to wait for a rate limit's turn."
        )
        self._meter = meter

    def attempt_started(self, job: str, mode: str) -> None:
        self._in_progress.add(1, {"job": job, "mode": mode})

    def attempt_finished(self, job: str, mode: str, outcome: str, duration_s: float, started: bool) -> None:
        labels = {"job": job, "mode": mode}
        if started:
            self._in_progress.add(-1, labels)
        self._finished.add(1, {**labels, "outcome": outcome})
        self._duration.record(duration_s, labels)
        if outcome == "retry":
            self._retries.add(1, labels)

    def inline_fallback(self, job: str) -> None:
        self._inline.add(1, {"job": job})

    def rate_limited(self, job: str) -> None:
        self._rate_limited.add(1, {"job": job})

    def watch_breaker(self, is_open: Callable[[], bool]) -> None:
        from opentelemetry.metrics import Observation

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(1.0 if is_open() else 0.0)]

        self._meter.create_observable_gauge(
            "maxbooster.redis.breaker_open", [observe], "1", "1 while Redis is considered unusable."
        )

    def close(self) -> None:
        """Export the last figures and stop the exporter's thread."""
        shut_down_within(self._provider.shutdown)
