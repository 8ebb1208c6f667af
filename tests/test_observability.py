"""Observability against real collectors on loopback: OpenTelemetry spans exported over OTLP/HTTP
by the real SDK to a receiver started here, and Sentry events posted by the real Sentry SDK to a
stand-in for its ingestion endpoint. Spans of a queued job, an inline job and a job enqueued
over HTTP share the trace of their enqueue; a failure for good reaches Sentry once, scrubbed;
nothing is loaded or sent when nothing is configured, or when the extras are missing."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from core import JobContext, Registry, define
from core.errors import PermanentError, TransientError
from settings import Settings, SettingsError, load_settings
from tests.conftest import RunningWorker, eventually
from tests.http_fixtures import TOKEN, serving
from tests.observability_fixtures import OtlpReceiver, SentryReceiver, otlp, sentry
from tests.sample_jobs import follow_up, record
from worker.engine import WorkerService
from worker.ops.doctor import check_error_reports, check_tracing
from worker.producer import Producer
from worker.telemetry.masking import MASK

__all__ = ["otlp", "sentry"]  # fixtures

ROOT = Path(__file__).resolve().parents[1]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
AI_KEY = "sk-test-Obs3rvability-key"


async def leaky(ctx: JobContext, *, data: dict[str, Any], message: str, transient: bool = False) -> None:
    """Fail with `message` (which may echo a secret), for good or (transient) until tries run out."""
    if transient:
        raise TransientError(message)
    raise PermanentError(message)


REGISTRY = Registry([define(record, max_tries=3), define(follow_up), define(leaky, max_tries=3)])


def _traced(settings: Settings, otlp: OtlpReceiver, **more: Any) -> Settings:
    return settings.model_copy(update={"otel_exporter_otlp_endpoint": otlp.endpoint, **more})


async def _worker(settings: Settings) -> RunningWorker:
    service = WorkerService(settings, registry=REGISTRY, handle_signals=False)
    return RunningWorker(service, asyncio.create_task(service.run()))


def _ran(client: httpx.AsyncClient, job_id: str) -> Callable[[], Awaitable[bool]]:
    async def complete() -> bool:
        return bool((await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "complete")

    return complete


def _lines(log_output: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]


async def test_a_queued_jobs_spans_share_the_trace_of_its_enqueue(
    settings: Settings, otlp: OtlpReceiver, log_output: io.StringIO
) -> None:
    traced = _traced(settings, otlp)
    worker = await _worker(traced)
    try:
        async with Producer(traced, registry=REGISTRY) as producer:
            handle = await producer.enqueue_job("record", {"key": "q"})
            await handle.result(timeout=10)
            flaky = await producer.enqueue_job(
                "leaky", {"data": {}, "message": "try again", "transient": True}
            )
            with pytest.raises(Exception, match="try again"):
                await flaky.result(timeout=10)
    finally:
        await worker.stop()  # the worker's provider exports what is left as it closes

    [enqueue] = [s for s in otlp.named("enqueue record")]
    [run] = otlp.named("run record")
    assert enqueue.kind == 4
    assert run.kind == 5
    assert run.trace_id == enqueue.trace_id
    assert run.parent_id == enqueue.span_id
    assert enqueue.attributes == {
        "job.name": "record", "job.id": handle.job_id, "job.queue": "default", "job.mode": "queued",
    }  # fmt: skip
    assert run.attributes == {
        "job.name": "record", "job.id": handle.job_id, "job.try": 1, "job.mode": "queued",
        "job.queue": "default", "job.outcome": "complete",
    }  # fmt: skip
    assert run.service == "maxbooster-jobs"
    # Every try of the failing job is a span of the same trace, each failure an error event.
    tries = sorted(otlp.named("run leaky"), key=lambda s: s.attributes["job.try"])
    assert [s.attributes["job.outcome"] for s in tries] == ["retry", "retry", "failed"]
    assert len({s.trace_id for s in tries}) == 1
    assert all(s.status == 2 and s.events[0][0] == "exception" for s in tries)
    assert tries[-1].events[0][1]["exception.message"] == "try again"
    assert "TransientError: try again" in tries[-1].events[0][1]["exception.stacktrace"]
    # The job's log line carries the run span's trace and span ids.
    [finished] = [
        line
        for line in _lines(log_output)
        if line["event"] == "job finished" and line["job_id"] == handle.job_id
    ]
    assert (finished["trace_id"], finished["span_id"]) == (run.trace_id, run.span_id)


async def test_an_inline_jobs_spans_share_the_trace_and_follow_ups_join_it(
    settings: Settings, otlp: OtlpReceiver
) -> None:
    # Redis not configured: both jobs run inline; OTel metrics mirror the Prometheus ones.
    inline = _traced(settings, otlp, redis_url=SecretStr(""), otel_metrics_exporter="otlp")
    async with Producer(inline, registry=REGISTRY) as producer:
        handle = await producer.enqueue_job("follow_up", {"key": "f"}, traceparent=TRACEPARENT)
        assert await handle.result(timeout=10) == "inline"

    spans = {s.name: s for s in otlp.named("")}
    assert set(spans) == {"enqueue follow_up", "run follow_up", "enqueue record", "run record"}
    assert {s.trace_id for s in spans.values()} == {TRACE_ID}  # the caller's trace, throughout
    assert spans["enqueue follow_up"].parent_id == "00f067aa0ba902b7"
    assert spans["run follow_up"].parent_id == spans["enqueue follow_up"].span_id
    assert spans["enqueue record"].parent_id == spans["run follow_up"].span_id  # enqueued by the job
    assert spans["run record"].parent_id == spans["enqueue record"].span_id
    assert spans["run record"].attributes["job.mode"] == "inline"
    assert spans["enqueue record"].attributes["job.mode"] == "inline"
    finished = otlp.metrics["maxbooster.jobs.finished"]
    assert ({"job": "record", "mode": "inline", "outcome": "complete"}, 1.0) in finished
    assert "maxbooster.job.duration" in otlp.metrics


async def test_a_job_enqueued_over_http_continues_the_callers_trace(
    settings: Settings, otlp: OtlpReceiver
) -> None:
    traced = _traced(settings, otlp, api_tokens=SecretStr(TOKEN))
    worker = await _worker(traced)
    try:
        async with (
            serving(traced, registry=REGISTRY) as url,
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
        ):
            reply = await client.post(
                "/v1/jobs/record",
                json={"args": {"key": "h"}, "wait": 10},
                headers={"traceparent": TRACEPARENT},
            )
            assert reply.json()["status"] == "complete", reply.text
            batch = {"jobs": [{"args": {"key": "b1"}}, {"args": {"key": "b2"}}]}
            other = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
            reply = await client.post("/v1/jobs/record/batch", json=batch, headers={"traceparent": other})
            assert reply.status_code == 202, reply.text
            ids = [job["job_id"] for job in reply.json()["jobs"]]
            for job_id in ids:
                await eventually(_ran(client, job_id), what="the batch's jobs to run")
    finally:
        await worker.stop()
    [enqueue, batched] = sorted(otlp.named("enqueue record"), key=lambda s: "job.count" in s.attributes)
    runs = {s.attributes["job.id"]: s for s in otlp.named("run record")}
    run = runs[enqueue.attributes["job.id"]]
    assert (enqueue.trace_id, enqueue.parent_id) == (TRACE_ID, "00f067aa0ba902b7")
    assert (run.trace_id, run.parent_id) == (TRACE_ID, enqueue.span_id)
    # A batch is one enqueue span, the parent of each of its jobs' runs.
    assert (batched.trace_id, batched.parent_id) == ("a" * 32, "b" * 16)
    assert batched.attributes["job.count"] == 2
    assert batched.attributes["job.mode"] == "queued"
    assert {runs[i].parent_id for i in ids} == {batched.span_id}


async def test_a_final_failure_reaches_sentry_once_scrubbed(
    settings: Settings, sentry: SentryReceiver
) -> None:
    reporting = settings.model_copy(
        update={"sentry_dsn": SecretStr(sentry.dsn), "ai_api_key": SecretStr(AI_KEY)}
    )
    data = {"password": "hunter2-hunter2", "webhook": "https://hook:url-Pa55@example.com/x", "note": "kept"}
    message = f"provider refused key {AI_KEY} at https://user:url-Pa55@api.example.com"
    worker = await _worker(reporting)
    try:
        async with Producer(reporting, registry=REGISTRY) as producer:
            handle = await producer.enqueue_job(
                "leaky", {"data": data, "message": message, "transient": True}, traceparent=TRACEPARENT
            )
            with pytest.raises(Exception, match="provider refused"):
                await handle.result(timeout=10)
    finally:
        await worker.stop()  # flushes the reports

    [report] = sentry.events  # three tries, one report: the retries that came before are not reported
    event = report.event
    assert event["tags"] == {
        "job": "leaky", "job_id": handle.job_id, "job_try": "3", "mode": "queued", "queue": "default",
        "outcome": "failed", "error_kind": "transient", "trace_id": TRACE_ID,
    }  # fmt: skip
    assert event["contexts"]["trace"]["trace_id"] == TRACE_ID
    arguments = event["contexts"]["job"]["arguments"]
    assert arguments["data"] == {
        "password": MASK,
        "webhook": "https://hook:***@example.com/x",
        "note": "kept",
    }
    [exception] = event["exception"]["values"]
    assert exception["type"] == "TransientError"
    assert exception["value"] == "provider refused key *** at https://user:***@api.example.com"
    assert exception["stacktrace"]["frames"][-1]["function"] == "leaky"
    assert all("vars" not in frame for frame in exception["stacktrace"]["frames"])  # no local variables
    raw = orjson.dumps(event).decode()
    assert AI_KEY not in raw
    assert "url-Pa55" not in raw
    assert "hunter2" not in raw


async def test_every_failed_try_is_reported_when_asked_and_crashes_too(
    settings: Settings, sentry: SentryReceiver
) -> None:
    inline = settings.model_copy(
        update={
            "redis_url": SecretStr(""),
            "sentry_dsn": SecretStr(sentry.dsn),
            "sentry_report_retries": True,
        }
    )
    async with Producer(inline, registry=REGISTRY) as producer:
        handle = await producer.enqueue_job("leaky", {"data": {}, "message": "down", "transient": True})
        with pytest.raises(Exception, match="down"):
            await handle.result(timeout=10)
        errors = producer.runtime.observability.errors
        assert errors is not None
        errors.crash(RuntimeError(f"loop broke near {sentry.dsn}"), where="worker: schedules")
    events = [r.event for r in sentry.events]
    assert [(e["tags"].get("outcome"), e["tags"].get("job_try")) for e in events[:3]] == [
        ("retry", "1"), ("retry", "2"), ("failed", "3"),
    ]  # fmt: skip
    assert all(e["tags"]["mode"] == "inline" for e in events[:3])
    crash = events[3]
    assert crash["level"] == "fatal"
    assert crash["tags"] == {"component": "worker: schedules"}
    assert SentryReceiver.KEY not in orjson.dumps(crash).decode()  # the DSN's key is a secret too


async def test_doctor_says_whether_tracing_and_reports_are_configured_and_reachable(
    settings: Settings, otlp: OtlpReceiver, sentry: SentryReceiver
) -> None:
    assert (await check_tracing(settings)).state == "not configured"
    assert (await check_error_reports(settings)).state == "not configured"
    both = _traced(settings, otlp, sentry_dsn=SecretStr(sentry.dsn))
    tracing, errors = await check_tracing(both), await check_error_reports(both)
    assert (tracing.state, errors.state) == ("ok", "ok"), (tracing, errors)
    assert otlp.endpoint in tracing.detail
    assert SentryReceiver.KEY not in errors.detail
    assert sentry.events == []  # the probe creates no issue
    closed = _traced(settings, otlp).model_copy(
        update={
            "otel_exporter_otlp_endpoint": "http://127.0.0.1:1",
            "sentry_dsn": SecretStr(sentry.dsn[:-2] + "7"),
        }
    )
    tracing, errors = await check_tracing(closed), await check_error_reports(closed)
    assert tracing.state == "not working"
    assert "start the collector" in tracing.fix
    assert errors.state == "not working"
    assert "project" in errors.detail


_PROBE = """
import asyncio, sys
{block}
from core import JobContext, Registry, define
from core.errors import PermanentError
from settings import load_settings
from worker.producer import Producer
from worker.telemetry import configure_logging

async def record(ctx: JobContext, *, key: str) -> dict[str, str]:
    return {{"key": key}}

async def leaky(ctx: JobContext, *, message: str) -> None:
    raise PermanentError(message)

async def main():
    registry = Registry([define(record), define(leaky)])
    settings = load_settings()
    configure_logging(settings)  # to standard error
    async with Producer(settings, registry=registry) as producer:
        handle = await producer.enqueue_job("record", {{"key": "plain"}})
        print("result", (await handle.result(timeout=10))["key"])
        failed = await producer.enqueue_job("leaky", {{"message": "no"}})
        try:
            await failed.result(timeout=10)
        except Exception as exc:
            print("failed", type(exc).__name__)
    print("loaded", sorted(m for m in ("opentelemetry", "sentry_sdk") if sys.modules.get(m)))

asyncio.run(main())
"""
# What a machine without the extras sees: importing them fails.
_NO_EXTRAS = "sys.modules.update(dict.fromkeys(['opentelemetry', 'sentry_sdk']))"


def _probe(settings: Settings, env: dict[str, str], *, installed: bool) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTRY_"))}
    base = {"REDIS_URL": "", "DATABASE_URL": settings.database_url.get_secret_value(), "LOG_FORMAT": "json"}
    code = _PROBE.format(block="" if installed else _NO_EXTRAS)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env={**clean, **base, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_nothing_is_loaded_or_sent_unless_configured_and_missing_extras_change_nothing(
    settings: Settings, otlp: OtlpReceiver, sentry: SentryReceiver
) -> None:
    configured = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "SENTRY_DSN": sentry.dsn}
    plain, missing, not_installed = await asyncio.gather(
        asyncio.to_thread(_probe, settings, {}, installed=True),
        asyncio.to_thread(_probe, settings, configured, installed=False),
        asyncio.to_thread(_probe, settings, {}, installed=False),
    )
    for run in (plain, missing, not_installed):
        assert run.returncode == 0, run.stderr[-3000:]
        assert "result plain\nfailed JobFailed\nloaded []\n" in run.stdout, run.stdout
    # Configured without the extras: said once each, with the fix; the jobs ran all the same.
    assert "pip install 'maxbooster-jobs[otel]'" in missing.stderr
    assert "pip install 'maxbooster-jobs[sentry]'" in missing.stderr
    assert "maxbooster-jobs[" not in plain.stderr + not_installed.stderr
    assert otlp.requests == []
    assert sentry.requests == []


def test_settings_name_the_bad_variable_and_keep_secrets_out() -> None:
    bad = {
        "otel_exporter_otlp_protocol": ("grpc", "use http/protobuf"),
        "sentry_dsn": ("https://k3y-in-dsn@sentry.example.com/not-a-project", "no project id"),
        "otel_exporter_otlp_headers": ("api-key", "is not key=value"),
        "otel_exporter_otlp_endpoint": ("ftp://collector", "use http:// or https://"),
    }
    for field, (value, fix) in bad.items():
        with pytest.raises(SettingsError, match=f"{field.upper()}: .*{fix}") as caught:
            load_settings(_env_file=None, redis_url="", **{field: value})
        assert "k3y-in-dsn" not in str(caught.value)
    good = load_settings(
        _env_file=None,
        sentry_dsn="https://k3y-in-dsn@sentry.example.com/42",
        otel_exporter_otlp_headers="api-key=h3ader-S3cret%21",
        otel_traces_exporter="OTLP",
    )
    assert good.tracing_configured
    assert good.otlp_url("traces") == "http://localhost:4318/v1/traces"
    assert good.otlp_headers == {"api-key": "h3ader-S3cret!"}
    assert good.sentry_dsn_redacted == "https://***@sentry.example.com/42"
    assert {"k3y-in-dsn", "h3ader-S3cret!"} <= set(good.secret_values())
    assert not load_settings(
        _env_file=None, otel_exporter_otlp_endpoint="http://c:4318", otel_sdk_disabled=True
    ).tracing_configured
