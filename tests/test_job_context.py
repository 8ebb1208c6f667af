"""A job's context is its own (not frozen): what a job changes in it changes what the job sees,
never its id, its tries or whether it is retried."""

from __future__ import annotations

import pytest

from core import JobContext, Registry, TransientError, define
from core.errors import JobFailed
from settings import Settings
from tests.conftest import make_settings, run_inline_job

RUNS: list[tuple[str, int]] = []


async def _greedy(ctx: JobContext) -> None:
    RUNS.append((ctx.job_id, ctx.job_try))
    ctx.max_tries = 99  # asking for more tries than it was given
    ctx.job_try = 0
    ctx.job_id = "someone-else"
    raise TransientError("the service is busy")


async def test_a_job_cannot_grant_itself_tries_or_change_its_id(settings: Settings) -> None:
    inline = settings.model_copy(update={"redis_url": make_settings("").redis_url, "retry_backoff_base": 0.0})
    registry = Registry([define(_greedy, name="greedy", max_tries=2)])
    RUNS.clear()
    with pytest.raises(JobFailed) as failed:
        await run_inline_job(inline, registry, "greedy", job_id="j-greedy", kwargs={})
    assert RUNS == [("j-greedy", 1), ("j-greedy", 2)]
    assert failed.value.job_id == "j-greedy"
