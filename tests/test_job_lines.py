"""The `job finished` line: one JSON object per attempt, in order with every other line, at the
configured level, whether it takes the fast path or goes through a log capture."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import structlog

from core import JobContext, Registry, define
from core.errors import JobFailed
from settings import Settings
from tests.conftest import make_settings, run_inline_job
from tests.sample_jobs import TEST_REGISTRY
from worker.telemetry import configure_logging, joblines


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def _two_jobs(settings: Settings) -> None:
    log = structlog.get_logger("test.neighbour")
    log.info("before")
    await run_inline_job(settings, TEST_REGISTRY, "record", job_id="j-one", kwargs={"key": "a"})
    log.info("between")
    with pytest.raises(JobFailed):
        await run_inline_job(settings, TEST_REGISTRY, "refuse", job_id="j-two", kwargs={"reason": "no"})
    log.info("after")
    await asyncio.sleep(0)  # the loop turn that writes the last pending line


async def test_job_lines_keep_their_fields_and_their_place(settings: Settings) -> None:
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0"), stream=stream)
    inline = settings.model_copy(update={"redis_url": make_settings("").redis_url})
    await _two_jobs(inline)

    lines = _lines(stream)
    events = [(line["event"], line.get("job_id")) for line in lines if line["event"] != "redis unavailable"]
    order = [e for e in events if e[0] in ("before", "between", "after", "job finished")]
    assert order == [
        ("before", None),
        ("job finished", "j-one"),
        ("between", None),
        ("job finished", "j-two"),
        ("after", None),
    ]
    done, failed = (line for line in lines if line["event"] == "job finished")
    assert {k: done[k] for k in ("job", "mode", "job_try", "outcome", "level", "logger")} == {
        "job": "record",
        "mode": "inline",
        "job_try": 1,
        "outcome": "complete",
        "level": "info",
        "logger": "worker.execution.outcomes",
    }
    assert isinstance(done["duration_ms"], float)
    # As structlog writes every other line's: UTC, to the microsecond, with a Z.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(done["timestamp"]))
    written = datetime.fromisoformat(str(done["timestamp"]))
    assert abs(written - datetime.now(UTC)) < timedelta(seconds=30)
    assert failed["level"] == "error"
    assert failed["outcome"] == "failed"
    assert failed["error"] == "refused: no"


async def test_level_above_info_drops_successes_and_keeps_failures(settings: Settings) -> None:
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0", log_level="WARNING"), stream=stream)
    inline = settings.model_copy(update={"redis_url": make_settings("").redis_url})
    try:
        await _two_jobs(inline)
    finally:
        configure_logging(make_settings("redis://localhost:1/0"), stream=io.StringIO())
    finished = [line for line in _lines(stream) if line["event"] == "job finished"]
    assert [(line["job_id"], line["outcome"]) for line in finished] == [("j-two", "failed")]


async def test_a_log_capture_still_receives_the_line(settings: Settings) -> None:
    configure_logging(make_settings("redis://localhost:1/0"), stream=io.StringIO())
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    capture = Capture()
    logging.getLogger().addHandler(capture)  # as pytest's caplog or an app's own handler would
    try:
        job_id = f"j-{uuid.uuid4().hex[:6]}"
        inline = settings.model_copy(update={"redis_url": make_settings("").redis_url})
        await run_inline_job(inline, TEST_REGISTRY, "record", job_id=job_id, kwargs={"key": "c"})
    finally:
        logging.getLogger().removeHandler(capture)
    finished = [r for r in captured if isinstance(r.msg, dict) and r.msg.get("event") == "job finished"]
    assert [r.msg["job_id"] for r in finished] == [job_id]  # type: ignore[index]


async def test_the_line_carries_the_callers_logging_context(settings: Settings) -> None:
    """An inline job run inside a request that bound its own fields: the job's line has them,
    next to the job's own (the line skips reading the context only when the job's are all)."""
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0"), stream=stream)
    inline = settings.model_copy(update={"redis_url": make_settings("").redis_url})
    bound = structlog.contextvars.bind_contextvars(request_id="req-7", job="the caller's")
    try:
        await run_inline_job(inline, TEST_REGISTRY, "record", job_id="j-ctx", kwargs={"key": "d"})
    finally:
        structlog.contextvars.reset_contextvars(**bound)
    await run_inline_job(inline, TEST_REGISTRY, "record", job_id="j-bare", kwargs={"key": "e"})
    await asyncio.sleep(0)
    finished = {line["job_id"]: line for line in _lines(stream) if line["event"] == "job finished"}
    assert finished["j-ctx"]["request_id"] == "req-7"
    assert finished["j-ctx"]["job"] == "record"  # the runner's own field wins a clash
    assert "request_id" not in finished["j-bare"]
    assert finished["j-bare"]["job"] == "record"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


async def _reports_odd_values(ctx: JobContext) -> None:
    ctx.report["tokens"] = 812
    ctx.report["big"] = 2**70  # past what orjson takes as a number
    ctx.report["odd"] = _Unprintable()  # neither JSON nor text


async def test_a_line_with_values_json_cannot_hold_still_comes_out_typed(settings: Settings) -> None:
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0"), stream=stream)
    inline = settings.model_copy(update={"redis_url": make_settings("").redis_url})
    registry = Registry([define(_reports_odd_values, name="reports_odd_values")])
    await run_inline_job(inline, registry, "reports_odd_values", job_id="j-odd", kwargs={})
    await run_inline_job(inline, TEST_REGISTRY, "record", job_id="j-after", kwargs={"key": "f"})
    await asyncio.sleep(0)
    finished = {line["job_id"]: line for line in _lines(stream) if line["event"] == "job finished"}
    odd = finished["j-odd"]
    assert odd["outcome"] == "complete"
    assert (odd["tokens"], odd["job_try"]) == (812, 1)  # the other fields keep their types
    assert odd["big"] == str(2**70)
    assert odd["odd"] == "<_Unprintable that cannot be shown>"
    assert str(odd["timestamp"]).endswith("Z")
    assert finished["j-after"]["outcome"] == "complete"


async def test_a_line_that_cannot_be_built_says_so_and_its_turn_keeps_the_others() -> None:
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0"), stream=stream)

    def broken(subject: object) -> dict[str, object]:
        raise KeyError("no such field")

    assert joblines.write(logging.INFO, broken, object())
    assert joblines.write(logging.INFO, lambda subject: {"job_id": "j-fine"}, object())
    await asyncio.sleep(0)  # the end of the turn: both lines built and written
    first, second = (line for line in _lines(stream) if line["event"] == "job finished")
    assert first["render_error"] == "'no such field'"
    assert second["job_id"] == "j-fine"
    assert "render_error" not in second


async def _reports_reserved_names(ctx: JobContext) -> None:
    ctx.report.update(level="loud", timestamp="yesterday", event="mine", tokens=3)


async def test_a_field_named_like_the_lines_own_leaves_one_of_each(settings: Settings) -> None:
    """A report or a caller's context with `level`, `timestamp`, `event` or `logger` cannot put a
    second one in the line (a JSON reader would keep either); the line's own stay."""
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0"), stream=stream)
    inline = settings.model_copy(update={"redis_url": make_settings("").redis_url})
    registry = Registry([define(_reports_reserved_names, name="reports_reserved_names")])
    bound = structlog.contextvars.bind_contextvars(logger="the caller's", request_id="req-9")
    try:
        await run_inline_job(inline, registry, "reports_reserved_names", job_id="j-names", kwargs={})
    finally:
        structlog.contextvars.reset_contextvars(**bound)
    await asyncio.sleep(0)
    raw = next(line for line in stream.getvalue().splitlines() if '"j-names"' in line)
    for name in ("level", "timestamp", "event", "logger"):
        assert raw.count(f'"{name}":') == 1, raw
    line = orjson.loads(raw)
    assert (line["event"], line["level"], line["logger"]) == ("job finished", "info", joblines.LOGGER_NAME)
    assert (line["tokens"], line["request_id"]) == (3, "req-9")
    assert str(line["timestamp"]).endswith("Z")
