"""AI jobs against a scripted OpenAI-compatible server, each behaviour queued and inline."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import orjson
import pytest

from core.context import Mode
from core.errors import JobFailed
from devservices.redis import RedisServer
from jobs import ai_email_variants, ai_social_captions, ai_track_tags, ai_week_narrative
from settings import Settings
from tests.ai_fixtures import (
    AI_KEY,
    FakeAI,
    Reply,
    captions_json,
    completion,
    log_events,
    make_ai_settings,
)
from tests.ai_fixtures import ai_settings as ai_settings  # fixtures, re-exported for pytest
from tests.ai_fixtures import fake_ai as fake_ai
from tests.ai_fixtures import mode as mode
from tests.conftest import running_producer

CAPTIONS: dict[str, Any] = {
    "artist_name": "Nova Lane",
    "release_title": "Midnight Drive",
    "description": "A synth-pop single about driving through the city at night.",
    "networks": ["instagram", "x"],
}
USAGE_150 = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


async def _captions(settings: Settings, mode: Mode, **overrides: Any) -> dict[str, Any]:
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job(ai_social_captions, {**CAPTIONS, **overrides})
        assert handle.mode == mode
        result: dict[str, Any] = await handle.result(timeout=20)
        return result


async def _captions_failure(settings: Settings, mode: Mode) -> JobFailed:
    with pytest.raises(JobFailed) as failure:
        await _captions(settings, mode)
    return failure.value


async def test_captions_are_validated_and_report_token_usage(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    fake_ai.queue(completion(captions_json()))
    result = await _captions(ai_settings, mode)

    assert result == {
        "output": {
            "captions": [
                {
                    "network": "instagram",
                    "text": "New single out now on instagram!",
                    "hashtags": ["#newmusic", "#indie"],
                },
                {"network": "x", "text": "New single out now on x!", "hashtags": ["#newmusic", "#indie"]},
            ]
        },
        "model": "fake-model-2024",
        "cached": False,
        "requests": 1,
        "usage": USAGE_150,
    }
    [request] = fake_ai.requests
    assert request.headers["authorization"] == f"Bearer {AI_KEY}"
    assert request.body["model"] == ai_settings.ai_model
    assert request.body["response_format"] == {"type": "json_object"}
    [line] = log_events(log_output)
    assert line["outcome"] == "complete"
    assert line["mode"] == mode
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (120, 30, 150)
    assert line["ai_cached"] is False
    assert AI_KEY not in log_output.getvalue()


async def test_429_is_retried_after_the_providers_retry_after(
    mode: Mode, redis_server: RedisServer, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    settings = make_ai_settings(redis_server.url, fake_ai, retry_backoff_max=5.0)
    limited = Reply(429, {"error": {"message": "Rate limit reached for requests"}}, {"Retry-After": "1"})
    fake_ai.queue(limited, completion(captions_json()))

    result = await _captions(settings, mode)

    assert result["requests"] == 1  # per attempt; the 429 was the first attempt
    first, second = fake_ai.requests
    assert second.at - first.at >= 1.0
    retry = log_events(log_output)[0]
    assert retry["outcome"] == "retry"
    assert retry["retry_in_s"] >= 1.0
    assert "429: Rate limit reached for requests" in retry["error"]


async def test_server_errors_are_retried_until_the_provider_recovers(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI
) -> None:
    fake_ai.queue(
        Reply(500, "upstream crashed"), Reply(503, {"error": "overloaded"}), completion(captions_json())
    )
    result = await _captions(ai_settings, mode)
    assert result["output"]["captions"][0]["network"] == "instagram"
    assert len(fake_ai.requests) == 3


async def test_server_errors_fail_as_transient_when_tries_run_out(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI
) -> None:
    fake_ai.default = Reply(502, {"error": {"message": "bad gateway"}})
    failure = await _captions_failure(ai_settings, mode)
    assert (failure.error_type, failure.kind) == ("TransientError", "transient")
    assert failure.message == "AI API answered 502: bad gateway"
    assert len(fake_ai.requests) == 5  # the AI jobs' max_tries


@pytest.mark.parametrize(
    ("status", "message", "hint"),
    [
        (400, "Invalid value for 'temperature'", None),
        (401, f"Incorrect API key provided: {AI_KEY}", "check AI_API_KEY"),
        (404, "The model `nope` does not exist", "check AI_BASE_URL"),
    ],
)
async def test_client_errors_fail_at_once_with_the_providers_message(
    mode: Mode,
    ai_settings: Settings,
    fake_ai: FakeAI,
    log_output: io.StringIO,
    status: int,
    message: str,
    hint: str | None,
) -> None:
    fake_ai.default = Reply(status, {"error": {"message": message, "type": "invalid_request_error"}})
    failure = await _captions_failure(ai_settings, mode)
    assert (failure.error_type, failure.kind) == ("PermanentError", "permanent")
    shown = message.replace(AI_KEY, "***")
    assert failure.message.startswith(f"AI API rejected the request ({status}): {shown}")
    if hint:
        assert hint in failure.message
    assert len(fake_ai.requests) == 1
    assert AI_KEY not in failure.message
    assert AI_KEY not in log_output.getvalue()


async def test_malformed_json_is_asked_for_again(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    fake_ai.queue(completion('{"captions": [{"network": "x", '), completion(captions_json()))
    result = await _captions(ai_settings, mode)

    assert result["requests"] == 2
    assert result["usage"] == {"prompt_tokens": 240, "completion_tokens": 60, "total_tokens": 300}
    again = fake_ai.requests[1].messages
    assert again[-2] == {"role": "assistant", "content": '{"captions": [{"network": "x", '}
    assert "not valid JSON" in again[-1]["content"]
    assert log_events(log_output)[-1]["total_tokens"] == 300


async def test_output_that_stays_malformed_fails_permanently_with_the_reason(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    fake_ai.default = completion("Sure! Here are your captions: ...")
    failure = await _captions_failure(ai_settings, mode)
    assert (failure.error_type, failure.kind) == ("PermanentError", "permanent")
    assert failure.message.startswith(
        "the model's reply was unusable 3 times; last problem: the reply is not valid JSON"
    )
    assert len(fake_ai.requests) == 3  # 1 + AI_MAX_OUTPUT_RETRIES, in one try
    [line] = log_events(log_output)
    assert (line["outcome"], line["total_tokens"], line["ai_requests"]) == ("failed", 450, 3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (captions_json(("instagram",)), "give exactly one caption for each of instagram, x (got instagram)"),
        ({**captions_json(), "send_email": "to all fans"}, "send_email: Extra inputs are not permitted"),
        (
            {"captions": [{"network": "instagram", "text": "hi"}, {"network": "x", "text": "y" * 300}]},
            "the x caption is 300 characters; the limit is 280",
        ),
        ({"captions": "none"}, "captions: Input should be a valid list"),
    ],
)
async def test_schema_violations_are_re_asked_then_fail_with_the_reason(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI, content: dict[str, Any], reason: str
) -> None:
    fake_ai.default = completion(content)
    failure = await _captions_failure(ai_settings, mode)
    assert failure.kind == "permanent"
    assert failure.message.endswith(f"last problem: {reason}")
    assert reason in fake_ai.requests[1].messages[-1]["content"]  # the model was told why


async def test_a_reply_slower_than_the_timeout_is_retried(
    mode: Mode, redis_server: RedisServer, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    settings = make_ai_settings(redis_server.url, fake_ai, ai_timeout=0.3)
    fake_ai.queue(dataclasses.replace(completion(captions_json()), delay=3.0), completion(captions_json()))
    result = await _captions(settings, mode)
    assert result["cached"] is False
    assert len(fake_ai.requests) == 2
    retry = log_events(log_output)[0]
    assert retry["outcome"] == "retry"
    assert "did not answer within 0.3s (AI_TIMEOUT)" in retry["error"]


async def test_identical_requests_are_served_from_the_cache(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI, log_output: io.StringIO
) -> None:
    fake_ai.queue(completion(captions_json()), completion(captions_json()))
    async with running_producer(ai_settings, mode) as producer:
        first = await (await producer.enqueue_job(ai_social_captions, CAPTIONS)).result(timeout=10)
        second = await (await producer.enqueue_job(ai_social_captions, CAPTIONS)).result(timeout=10)
        other = await (await producer.enqueue_job(ai_social_captions, {**CAPTIONS, "tone": "warm"})).result(
            10
        )

    assert second["cached"] is True
    assert second["output"] == first["output"]
    assert second["model"] == first["model"]
    assert second["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert other["cached"] is False
    assert len(fake_ai.requests) == 2
    assert [line["ai_cached"] for line in log_events(log_output)] == [False, True, False]


_OTHER_JOBS: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
    (
        ai_email_variants,
        {"artist_name": "Nova Lane", "purpose": "tour", "brief": "Five dates in May.", "variants": 2},
        {
            "variants": [
                {"subject": "We're on tour!", "body": "See you in May."},
                {"subject": "Five nights", "body": "Tickets now."},
            ]
        },
    ),
    (
        ai_week_narrative,
        {
            "artist_name": "Nova Lane",
            "week_start": "2025-03-03",
            "metrics": {"streams": 12000, "new followers": 85},
        },
        {"headline": "A big week", "narrative": "12000 streams and 85 new followers."},
    ),
    (
        ai_track_tags,
        {"title": "Midnight Drive", "description": "Dreamy synths, a driving beat."},
        {"genres": ["Synth-Pop", "electronic"], "moods": ["dreamy"]},
    ),
]


@pytest.mark.parametrize(("job", "kwargs", "reply"), _OTHER_JOBS, ids=lambda v: getattr(v, "__name__", ""))
async def test_every_ai_job_returns_its_validated_output(
    mode: Mode,
    ai_settings: Settings,
    fake_ai: FakeAI,
    job: Any,
    kwargs: dict[str, Any],
    reply: dict[str, Any],
) -> None:
    fake_ai.queue(completion(reply))
    async with running_producer(ai_settings, mode) as producer:
        handle = await producer.enqueue_json(job.__name__, orjson.dumps(kwargs))
        result = await handle.result(timeout=10)
    expected = reply
    if job is ai_track_tags:
        expected = {"genres": ["synth-pop", "electronic"], "moods": ["dreamy"]}  # normalised
    assert result["output"] == expected
    assert result["usage"] == USAGE_150


async def test_email_variants_must_match_the_requested_count(
    mode: Mode, ai_settings: Settings, fake_ai: FakeAI
) -> None:
    one = {"variants": [{"subject": "Hi", "body": "Hello"}]}
    two = {"variants": [{"subject": "Hi", "body": "Hello"}, {"subject": "Hey", "body": "Hello again"}]}
    fake_ai.queue(completion(one), completion(two))
    async with running_producer(ai_settings, mode) as producer:
        kwargs = {"artist_name": "Nova", "purpose": "merch", "brief": "New shirts.", "variants": 2}
        result = await (await producer.enqueue_job(ai_email_variants, kwargs)).result(timeout=10)
    assert result["output"] == two
    assert "give exactly 2 variants (got 1)" in fake_ai.requests[1].messages[-1]["content"]
