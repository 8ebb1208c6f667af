"""The general hooks the AI jobs use, on plain test jobs: `ctx.report`, `precheck`, Annotated limits."""

from __future__ import annotations

import io
from typing import Annotated, Any

import pytest
from pydantic import Field

from core import JobContext, Registry, define
from core.context import Mode
from core.errors import JobFailed, JobValidationError, PermanentError
from settings import Settings
from tests.ai_fixtures import log_events
from tests.ai_fixtures import mode as mode  # fixture, re-exported for pytest
from tests.conftest import make_settings, raw_redis, running_producer

RAN: list[str] = []


async def reporting(ctx: JobContext, *, fail: bool = False) -> str:
    """Report fields for the finished line, including ones that clash with the runner's own."""
    RAN.append("reporting")
    ctx.report.update(widgets=3, outcome="hijacked", event="hijacked", duration_ms=-1)
    if fail:
        raise PermanentError("no widgets")
    return "ok"


async def needs_setting(ctx: JobContext) -> str:
    """Runs only when the queue name says so (a stand-in for a provider's settings)."""
    RAN.append("needs_setting")
    return "ran"


async def bounded(ctx: JobContext, *, count: Annotated[int, Field(ge=1, le=3)]) -> int:
    """Takes a constrained argument."""
    return count


def _precheck(settings: Settings) -> str | None:
    return None if settings.queue_name.endswith("-ok") else "set QUEUE_NAME to something ending in -ok"


HOOKS = Registry([define(reporting), define(needs_setting, precheck=_precheck), define(bounded)])


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


@pytest.fixture
def settings(redis_server: Any) -> Settings:
    return make_settings(redis_server.url)


async def test_reported_fields_join_the_finished_line_without_overriding_it(
    mode: Mode, settings: Settings, log_output: io.StringIO
) -> None:
    async with running_producer(settings, mode, registry=HOOKS) as producer:
        assert await (await producer.enqueue_job("reporting")).result(timeout=5) == "ok"
        with pytest.raises(JobFailed):
            await (await producer.enqueue_job("reporting", {"fail": True})).result(timeout=5)
    done, failed = log_events(log_output)
    assert (done["widgets"], done["outcome"], done["mode"]) == (3, "complete", mode)
    assert done["duration_ms"] >= 0
    assert (failed["widgets"], failed["outcome"], failed["error"]) == (3, "failed", "no widgets")


async def test_a_failing_precheck_refuses_the_enqueue(mode: Mode, settings: Settings) -> None:
    async with running_producer(settings, mode, registry=HOOKS) as producer:
        with pytest.raises(
            JobValidationError, match=r"^needs_setting: set QUEUE_NAME to something ending in -ok$"
        ):
            await producer.enqueue_job("needs_setting")
        with pytest.raises(JobValidationError, match="set QUEUE_NAME"):
            await producer.enqueue_json("needs_setting", "{}")
        if producer.backend.usable:
            assert await raw_redis(producer.settings).zcard(producer.settings.queue_name) == 0
    assert RAN == []


async def test_a_passing_precheck_lets_the_job_run(mode: Mode, redis_server: Any) -> None:
    settings = make_settings(redis_server.url, queue_name="test:hooks-ok")
    async with running_producer(settings, mode, registry=HOOKS) as producer:
        assert await (await producer.enqueue_job("needs_setting")).result(timeout=5) == "ran"


async def test_annotated_constraints_in_a_signature_are_enforced_at_enqueue(
    mode: Mode, settings: Settings
) -> None:
    async with running_producer(settings, mode, registry=HOOKS) as producer:
        with pytest.raises(
            JobValidationError, match="argument 'count': Input should be less than or equal to 3"
        ):
            await producer.enqueue_job("bounded", {"count": 4})
        assert await (await producer.enqueue_job("bounded", {"count": 3})).result(timeout=5) == 3
