"""One contract, two modes: every assertion here holds for queued and for inline execution."""

from __future__ import annotations

import io

import orjson
import pytest

from core.errors import JobFailed, JobValidationError, UnknownJobError
from jobs import ping
from tests.conftest import raw_redis
from tests.sample_jobs import RUNS, flaky, record
from worker.producer import Producer


async def test_result_comes_back_with_the_mode_it_ran_in(producer: Producer) -> None:
    handle = await producer.enqueue(ping, message="hello")
    result = await handle.result(timeout=5)
    assert result["message"] == "hello"
    assert result["mode"] == handle.mode
    assert result["job_id"] == handle.job_id


async def test_job_by_registered_name_and_own_job_id(producer: Producer) -> None:
    handle = await producer.enqueue_job("record", {"key": "by-name"}, job_id="my-id-1")
    assert handle.job_id == "my-id-1"
    assert await handle.result(timeout=5) == {"key": "by-name", "mode": handle.mode}
    assert [("by-name", handle.mode, 1)] == RUNS


async def test_permanent_error_fails_once_with_type_and_message(producer: Producer) -> None:
    handle = await producer.enqueue_job("refuse", {"reason": "bad input"})
    with pytest.raises(JobFailed) as failure:
        await handle.result(timeout=5)
    assert failure.value.error_type == "PermanentError"
    assert failure.value.message == "refused: bad input"
    assert failure.value.kind == "permanent"
    assert [r[2] for r in RUNS] == [1]  # not retried


async def test_unexpected_exception_is_permanent(producer: Producer) -> None:
    handle = await producer.enqueue_job("broken", {"key": "k"})
    with pytest.raises(JobFailed) as failure:
        await handle.result(timeout=5)
    assert failure.value.error_type == "KeyError"
    assert len(RUNS) == 1


async def test_transient_errors_are_retried_until_success(producer: Producer) -> None:
    handle = await producer.enqueue(flaky, key="f1", failures=2)
    assert await handle.result(timeout=5) == {"key": "f1", "tries": 3}
    assert [r[2] for r in RUNS] == [1, 2, 3]
    assert {r[1] for r in RUNS} == {handle.mode}


async def test_retries_stop_at_max_tries(producer: Producer) -> None:
    handle = await producer.enqueue(flaky, key="f2", failures=100)
    with pytest.raises(JobFailed) as failure:
        await handle.result(timeout=5)
    assert failure.value.error_type == "TransientError"
    assert failure.value.kind == "transient"
    assert [r[2] for r in RUNS] == [1, 2, 3, 4]  # flaky's max_tries


async def test_timeout_applies_and_counts_as_transient(producer: Producer) -> None:
    handle = await producer.enqueue_job("sleepy", {"seconds": 5})
    with pytest.raises(JobFailed) as failure:
        await handle.result(timeout=10)
    assert failure.value.error_type == "JobTimeout"
    assert "0.3s timeout" in failure.value.message


async def test_result_that_json_cannot_carry_is_a_permanent_error(producer: Producer) -> None:
    handle = await producer.enqueue_job("bad_result", {"key": "x"})
    with pytest.raises(JobFailed, match="not JSON-serializable"):
        await handle.result(timeout=5)


@pytest.mark.parametrize(
    ("job", "kwargs", "message"),
    [
        ("nope", {}, "unknown job 'nope'"),
        ("record", {}, "argument 'key' is required"),
        ("record", {"key": 5}, "argument 'key': Input should be a valid string"),
        ("record", {"key": "k", "extra": 1}, "unknown argument 'extra'"),
        ("takes_any", {"data": object()}, "not JSON-serializable"),
        ("takes_any", {"data": "x" * 300_000}, "over the 262144-byte limit"),
    ],
)
async def test_bad_input_is_refused_before_anything_runs_or_is_queued(
    producer: Producer, job: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(JobValidationError, match=message):
        await producer.enqueue_job(job, kwargs)
    assert RUNS == []
    if producer.backend.usable:
        assert await raw_redis(producer.settings).zcard(producer.settings.queue_name) == 0


async def test_unknown_job_by_function_object(producer: Producer) -> None:
    async def not_registered(ctx: object) -> None:
        return None

    with pytest.raises(UnknownJobError):
        await producer.enqueue_job(not_registered)


async def test_enqueue_by_function_checks_keyword_arguments(producer: Producer) -> None:
    with pytest.raises(JobValidationError, match="argument 'key'"):
        await producer.enqueue(record, key=7)  # type: ignore[arg-type]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_traceparent_joins_the_jobs_log_lines_to_its_request(
    producer: Producer, log_output: io.StringIO
) -> None:
    handle = await producer.enqueue_job("record", {"key": "traced"}, traceparent=TRACEPARENT)
    await handle.result(timeout=5)
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    [finished] = [
        line for line in lines if line["event"] == "job finished" and line["job_id"] == handle.job_id
    ]
    assert finished["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    with pytest.raises(JobValidationError, match="traceparent: 'not-a-trace' is not a W3C traceparent"):
        await producer.enqueue_job("record", {"key": "x"}, traceparent="not-a-trace")
