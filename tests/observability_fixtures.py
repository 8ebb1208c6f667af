"""Stand-ins for the observability backends, on loopback: an OTLP/HTTP receiver (what an
OpenTelemetry collector listens with on port 4318) that decodes the protobuf exports the real
exporter sends, and a Sentry ingestion endpoint that unpacks the envelopes the real Sentry SDK
posts. Both run in a thread of their own, as the SDKs export from threads of their own."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OtlpReceiver", "ReceivedSpan", "SentryReceiver", "otlp", "sentry"]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int  # 4: producer, 5: consumer (the OTLP enum)
    attributes: dict[str, Any]
    status: int  # 2: error
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    service: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Receiver:
    """A loopback HTTP server in a thread; subclasses decide what a POST means."""

    def __init__(self) -> None:
        owner = self
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every POST
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with owner.lock:
                    owner.requests.append((self.path, dict(self.headers)))
                    status, reply = owner.handle(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class OtlpReceiver(_Receiver):
    """Takes OTLP/HTTP protobuf exports at /v1/traces and /v1/metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []
        self.metrics: dict[str, list[tuple[dict[str, Any], float]]] = {}  # name -> (attributes, value)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            for resource in traces.resource_spans:
                attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans.append(self._span(span, str(attributes.get("service.name"))))
            return 200, b"{}"
        if path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in metrics.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points if kind else []
                        for point in points:
                            labels = {a.key: _value(a.value) for a in point.attributes}
                            if kind == "histogram":
                                value = float(point.count)
                            else:
                                value = float(getattr(point, point.WhichOneof("value") or "as_double"))
                            self.metrics.setdefault(metric.name, []).append((labels, value))
            return 200, b"{}"
        return 404, b"{}"

    @staticmethod
    def _span(span: Any, service: str) -> ReceivedSpan:
        return ReceivedSpan(
            name=span.name,
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_id=span.parent_span_id.hex(),
            kind=span.kind,
            attributes={a.key: _value(a.value) for a in span.attributes},
            status=span.status.code,
            status_message=span.status.message,
            events=[(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
            service=service,
        )

    def named(self, prefix: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.name.startswith(prefix)]


@dataclass
class SentryEvent:
    event: dict[str, Any]
    auth: str
    items: list[str] = field(default_factory=list)


class SentryReceiver(_Receiver):
    """Takes Sentry envelopes at /api/<project>/envelope/ and keeps the error events."""

    KEY = "0123456789abcdef0123456789abcdef"
    PROJECT = "42"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[SentryEvent] = []
        self.envelopes = 0

    @property
    def dsn(self) -> str:
        return f"http://{self.KEY}@127.0.0.1:{self.port}/{self.PROJECT}"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if path != f"/api/{self.PROJECT}/envelope/":
            return 404, b'{"detail": "unknown project"}'
        auth = headers.get("X-Sentry-Auth", "")
        if f"sentry_key={self.KEY}" not in auth:
            return 401, b'{"detail": "bad key"}'
        self.envelopes += 1
        lines = body.split(b"\n")
        i, types = 1, []
        while i + 1 < len(lines) and lines[i]:
            item = json.loads(lines[i])
            payload = lines[i + 1]
            types.append(item.get("type", ""))
            if item.get("type") == "event":
                self.events.append(SentryEvent(json.loads(payload), auth, types))
            i += 2
        return 200, b"{}"


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def sentry() -> Iterator[SentryReceiver]:
    with SentryReceiver() as receiver:
        yield receiver
