"""OpenTelemetry traces: a span for each enqueue and a span for each attempt, joined through the
W3C `traceparent` the job record carries (`tp`), whoever enqueued the job (the Python producer,
the HTTP API, the TypeScript client).

Built only when the OTEL_* variables ask for traces (`Settings.tracing_configured`), and then
`opentelemetry` is imported here, inside `build_tracing` and `Tracing`, never at import time: a
process without the `otel` extra or without the variables does not load it, and the attempt
path pays one `is None` check.

- `enqueue <job>` (kind PRODUCER) has the caller's traceparent as parent, or else the current
  OpenTelemetry span (a web app's request span). Attributes: job.name, job.id, job.queue and
  job.mode (queued, inline, spooled or refused), job.duplicate; a batch is one span with
  job.count. Its context is the traceparent the job record carries from then on.
- `run <job>` (kind CONSUMER), one per attempt in a worker or inline, is a child of the record's
  traceparent. Attributes: job.name, job.id, job.try, job.mode (queued or inline), job.queue,
  job.outcome. A failed try is an `exception` event (type, message and stack trace, with every
  configured secret and URL password cut out) and the ERROR status. It is the current span while
  the job runs, so the spans of instrumented libraries and the follow-up jobs the job enqueues
  are its children.

The provider: a process that set up the OpenTelemetry SDK itself (a web app) keeps it, and the
spans go through it. Otherwise the runtime builds one that exports over OTLP/HTTP in batches,
from a background thread, and shuts it down at close, sending what is left.
"""

from __future__ import annotations

import importlib.metadata
import threading
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.errors import EnqueueError, JobFailed
from settings import Settings
from worker.telemetry.masking import Masker

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["AttemptSpan", "EnqueueSpan", "Tracing", "build_tracing", "queue_label", "shut_down_within"]

# How long a closing process waits for its last spans to be exported.
_CLOSE_WAIT_S = 5.0


def _version() -> str:
    try:
        return importlib.metadata.version("maxbooster-jobs")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def queue_label(base: str, key: str | None) -> str | None:
    """A queue's name (default, ai) from its Redis key (`QUEUE_NAME`, `QUEUE_NAME:ai`)."""
    if key is None or key == base:
        return "default" if key is not None else None
    return key[len(base) + 1 :] if key.startswith(base + ":") else key


def shut_down_within(shutdown: Any, timeout_s: float = _CLOSE_WAIT_S) -> bool:
    """Run a blocking `shutdown()` in a daemon thread and wait at most `timeout_s`: a collector
    that does not answer must not hold up a stopping worker (nor its exit)."""
    thread = threading.Thread(target=shutdown, name="otel-shutdown", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


class EnqueueSpan:
    """One enqueue; `traceparent` is what the job record carries."""

    __slots__ = ("_masker", "_span", "traceparent")

    def __init__(self, span: Span, traceparent: str, masker: Masker) -> None:
        self._span = span
        self._masker = masker
        self.traceparent = traceparent

    def done(self, mode: str, *, duplicate: bool = False) -> None:
        self._span.set_attribute("job.mode", mode)
        if duplicate:
            self._span.set_attribute("job.duplicate", True)
        self._span.end()

    def done_many(self, modes: Mapping[str, int]) -> None:
        """A batch: job.mode lists the modes its jobs took, job.mode.<mode> counts each."""
        self._span.set_attribute("job.mode", ",".join(sorted(modes)))
        for mode, count in modes.items():
            self._span.set_attribute(f"job.mode.{mode}", count)
        self._span.end()

    def failed(self, exc: BaseException) -> None:
        """The enqueue raised: `refused` when the fallback policy said so, else an error."""
        from opentelemetry.trace import Status, StatusCode

        if isinstance(exc, EnqueueError):
            self._span.set_attribute("job.mode", "refused")
        message = self._masker.text(str(exc))
        self._span.add_event(
            "exception", {"exception.type": type(exc).__name__, "exception.message": message}
        )
        self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))
        self._span.end()


class AttemptSpan:
    """One attempt, the current span while the job runs; `end()` once, in the same task."""

    __slots__ = ("_token", "_tracing", "span", "span_id", "trace_id", "traceparent")

    def __init__(self, tracing: Tracing, span: Span, token: Token[Context]) -> None:
        self._tracing = tracing
        self._token = token
        self.span = span
        context = span.get_span_context()
        self.trace_id = f"{context.trace_id:032x}"
        self.span_id = f"{context.span_id:016x}"
        self.traceparent = f"00-{self.trace_id}-{self.span_id}-{context.trace_flags:02x}"

    def end(
        self, outcome: str, error: JobFailed | None = None, exception: BaseException | None = None
    ) -> None:
        span = self.span
        try:
            span.set_attribute("job.outcome", outcome)
            if error is not None and outcome in ("retry", "failed") and span.is_recording():
                self._tracing.record_failure(span, error, exception)
            span.end()
        finally:
            self._tracing.detach(self._token)


class Tracing:
    """Makes the runner's spans with one tracer; `aclose()` flushes a provider it owns."""

    def __init__(
        self, tracer: Tracer, *, masker: Masker, queue_base: str, provider: TracerProvider | None
    ) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
        )

        self._tracer = tracer
        self._provider = provider  # None: the process's own provider, not ours to shut down
        self._masker = masker
        self._queue_base = queue_base
        self._attach = context.attach
        self.detach = context.detach
        self._in_context = trace.set_span_in_context
        self._remote = (NonRecordingSpan, SpanContext, TraceFlags)
        self._producer, self._consumer = SpanKind.PRODUCER, SpanKind.CONSUMER
        self._error = (Status, StatusCode.ERROR)

    def _parent(self, traceparent: str | None) -> Context | None:
        """The remote span a W3C traceparent names; None (the current context) without one."""
        if traceparent is None:
            return None
        non_recording, span_context, flags = self._remote
        remote = span_context(
            int(traceparent[3:35], 16),
            int(traceparent[36:52], 16),
            is_remote=True,
            trace_flags=flags(int(traceparent[53:55], 16)),
        )
        return self._in_context(non_recording(remote))

    def enqueue(
        self, job: str, job_id: str | None, queue: str | None, traceparent: str | None, *, count: int = 1
    ) -> EnqueueSpan:
        attributes: dict[str, Any] = {"job.name": job}
        if job_id is not None:
            attributes["job.id"] = job_id
        if count != 1:
            attributes["job.count"] = count
        if (name := queue_label(self._queue_base, queue)) is not None:
            attributes["job.queue"] = name
        span = self._tracer.start_span(
            f"enqueue {job}", self._parent(traceparent), kind=self._producer, attributes=attributes
        )
        context = span.get_span_context()
        return EnqueueSpan(
            span, f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}", self._masker
        )

    def attempt(
        self, job: str, job_id: str, job_try: int, mode: str, queue: str | None, traceparent: str | None
    ) -> AttemptSpan:
        attributes: dict[str, Any] = {"job.name": job, "job.id": job_id, "job.try": job_try, "job.mode": mode}
        if (name := queue_label(self._queue_base, queue)) is not None:
            attributes["job.queue"] = name
        span = self._tracer.start_span(
            f"run {job}", self._parent(traceparent), kind=self._consumer, attributes=attributes
        )
        return AttemptSpan(self, span, self._attach(self._in_context(span)))

    def record_failure(self, span: Span, error: JobFailed, exception: BaseException | None) -> None:
        message = self._masker.text(error.message)
        attributes = {"exception.type": error.error_type, "exception.message": message}
        if exception is not None:
            trace_text = "".join(traceback.format_exception(exception))
            attributes["exception.stacktrace"] = self._masker.text(trace_text)
        span.add_event("exception", attributes)
        status, code = self._error
        span.set_status(status(code, f"{error.error_type}: {message}"))

    def flush(self) -> bool:
        """Export the spans ended so far (tests and `doctor` use it); False if it timed out."""
        provider = self._provider
        return provider is None or provider.force_flush(int(_CLOSE_WAIT_S * 1000))

    def close(self) -> None:
        """Export what is left and stop the exporter's thread (a provider of our own only)."""
        if self._provider is not None:
            shut_down_within(self._provider.shutdown)


def build_tracing(settings: Settings) -> Tracing:
    """The runner's tracing as OTEL_* configures it. Raises ImportError without the `otel` extra."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    masker = Masker(settings.secret_values())
    version = _version()
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # the process set up OpenTelemetry itself
        tracer = current.get_tracer("maxbooster-jobs", version)
        return Tracing(tracer, masker=masker, queue_base=settings.queue_name, provider=None)
    exporter: SpanExporter
    if settings.otel_traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_url("traces"), headers=settings.otlp_headers or None
        )
    resource = Resource.create({"service.name": settings.otel_service_name, "service.version": version})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("maxbooster-jobs", version)
    return Tracing(tracer, masker=masker, queue_base=settings.queue_name, provider=provider)
