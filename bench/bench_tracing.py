"""The cost of OpenTelemetry tracing: the no-op drain of bench_worker with tracing off and on, runs
interleaved in one process, our worker only. With tracing on, the worker and the producer export
over OTLP/HTTP to a sink on loopback (a thread of this process that keeps the bodies and decodes
them after the run, so the spans that arrived are counted, not assumed). Prints a markdown
section; writes bench/results/tracing.json.

    python -m bench.bench_tracing   # BENCH_QUICK=1: a fast smoke run
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import SecretStr

from bench import scenarios
from bench.scenarios import Env
from bench.stats import summarize
from devservices.redis import RedisServer
from settings import Settings
from worker.telemetry import configure_logging

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "tracing.json"
QUICK = os.environ.get("BENCH_QUICK") == "1"
JOBS = 2_000 if QUICK else 20_000
RUNS = 3 if QUICK else 5


class _Sink(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that answers 200 and keeps what it got, for counting afterwards."""

    daemon_threads = True

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def spans(self) -> int:
        """Spans received since the last call."""
        bodies, self.bodies = self.bodies, []
        count = 0
        for body in bodies:
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
                count += sum(len(scope.spans) for scope in resource.scope_spans)
        return count


async def _measure(url: str, sink: _Sink) -> dict[str, list[Any]]:
    off, on = Env(url), Env(url, otel_endpoint=f"http://127.0.0.1:{sink.server_address[1]}")
    runs: dict[str, list[Any]] = {"off": [], "on": [], "spans": []}
    for _ in range(RUNS):
        runs["off"].append((await scenarios.drain("ours", off, "noop", JOBS)).rate)
        sink.spans()
        runs["on"].append((await scenarios.drain("ours", on, "noop", JOBS)).rate)
        runs["spans"].append(sink.spans())  # the worker's spans arrive by its stop: all of them
    return runs


def _markdown(runs: dict[str, list[Any]]) -> str:
    off, on = summarize(runs["off"]), summarize(runs["on"])
    per_job_us = (1 / on.median - 1 / off.median) * 1e6
    spans = summarize(runs["spans"])
    version = importlib.metadata.version("opentelemetry-sdk")
    return "\n".join(
        [
            "## The cost of tracing (OpenTelemetry)",
            "",
            f"Draining {JOBS:,} no-op jobs, our worker, runs interleaved: tracing off "
            f"{off.median:,.0f} jobs/s (min {off.min:,.0f}, max {off.max:,.0f}, n={off.n}), on "
            f"{on.median:,.0f} jobs/s (min {on.min:,.0f}, max {on.max:,.0f}, n={on.n}); "
            f"{on.median / off.median:.2f}× the rate, {per_job_us:+.1f} µs per job. With tracing on, "
            "each attempt is a span (started, made current, given six attributes, ended) that the "
            f"SDK's batch processor (opentelemetry-sdk {version}) encodes and posts over OTLP/HTTP from "
            "a thread of its own, to a sink on loopback in the benchmark's process. The sink received "
            f"a median of {spans.median:,.0f} spans a run (the drain's jobs, the warm-up job, the fill's "
            "enqueue span; the batch processor drops spans when its queue of 2,048 is full, so fewer "
            "than the jobs means spans were dropped). With tracing off the attempt path pays one "
            "`is None` check.",
        ]
    )


def main() -> None:
    quiet = Settings(_env_file=None, redis_url=SecretStr(""), log_format="json")  # type: ignore[call-arg]
    configure_logging(quiet, stream=io.StringIO())
    sink = _Sink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        with RedisServer() as server:
            runs = asyncio.run(_measure(server.url, sink))
    finally:
        sink.shutdown()
        sink.server_close()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"jobs": JOBS, "runs": runs}, indent=1))
    print(_markdown(runs))


if __name__ == "__main__":
    main()
