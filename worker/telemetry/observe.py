"""What a process sends to observability backends, as its settings ask: OpenTelemetry traces
(`tracing`), OTel metrics (`metrics`) and Sentry error reports (`errors`). Each is None unless
configured, and then its package is imported (the `otel` and `sentry` extras). A configured one
whose extra is missing is said loudly, once, and the runner carries on without it: jobs never
depend on their observers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from settings import Settings, redact_url
from worker.telemetry.errors_report import ErrorReports, build_error_reports
from worker.telemetry.metrics import DURATION_BUCKETS
from worker.telemetry.otel_metrics import OtelMetrics
from worker.telemetry.tracing import Tracing, build_tracing

__all__ = ["Observability"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _optional(build: Callable[[], T], what: str, extra: str) -> T | None:
    try:
        return build()
    except ImportError as exc:
        log.error(
            f"{what} is configured but its package is missing; running without it",
            error=str(exc),
            fix=f"pip install 'maxbooster-jobs[{extra}]'",
        )
        return None


@dataclass(frozen=True, slots=True)
class Observability:
    tracing: Tracing | None = None
    metrics: OtelMetrics | None = None
    errors: ErrorReports | None = None

    @classmethod
    def build(cls, settings: Settings) -> Observability:
        if not (settings.tracing_configured or settings.otel_metrics_configured or settings.sentry_dsn):
            return cls()
        tracing = metrics = errors = None
        if settings.tracing_configured:
            tracing = _optional(lambda: build_tracing(settings), "OpenTelemetry tracing (OTEL_*)", "otel")
            if tracing is not None:
                where = (
                    "console" if settings.otel_traces_exporter == "console" else settings.otlp_url("traces")
                )
                log.info("OpenTelemetry tracing on", exporter=redact_url(where))
        if settings.otel_metrics_configured:
            metrics = _optional(
                lambda: OtelMetrics(settings, DURATION_BUCKETS),
                "OpenTelemetry metrics (OTEL_METRICS_EXPORTER)",
                "otel",
            )
        if settings.sentry_dsn is not None:
            errors = _optional(lambda: build_error_reports(settings), "Sentry (SENTRY_DSN)", "sentry")
            if errors is not None:
                log.info(
                    "Sentry error reports on",
                    dsn=settings.sentry_dsn_redacted,
                    report_retries=settings.sentry_report_retries,
                )
        return cls(tracing, metrics, errors)

    async def aclose(self) -> None:
        """Send what is left: spans, the last metrics, queued error reports."""
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if self.errors is not None:
            await self.errors.flush()
