"""The AI client on its own: error mapping, Retry-After, limits, secrets, settings."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from core.errors import PermanentError, TransientError
from jobs.ai.budget import RequestBudget
from jobs.ai.client import AIClient, Usage
from settings import SettingsError, load_settings
from tests.ai_fixtures import AI_KEY, FakeAI, Reply, completion, make_ai_settings
from tests.ai_fixtures import fake_ai as fake_ai  # fixture, re-exported for pytest

MESSAGES = [{"role": "user", "content": "Reply with JSON."}]


@pytest.fixture
async def client(fake_ai: FakeAI) -> AsyncIterator[AIClient]:
    ai = AIClient(base_url=fake_ai.url, model="m", api_key=SecretStr(AI_KEY), timeout=2.0)
    yield ai
    await ai.aclose()


async def _ask(client: AIClient) -> object:
    return await client.chat_json(MESSAGES, temperature=0.0, max_tokens=50)


IN_30S = "<an HTTP date 30 s from now>"  # made when the test runs, not when it is collected


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"Retry-After": "7"}, 7, 7),
        ({"Retry-After": "1.5"}, 1.5, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25, 0.25),
        ({"Retry-After": IN_30S}, 25, 30),
    ],
)
async def test_retry_after_in_every_form_reaches_the_retry_policy(
    client: AIClient, fake_ai: FakeAI, headers: dict[str, str], low: float, high: float
) -> None:
    if headers.get("Retry-After") == IN_30S:
        in_30s = datetime.now(UTC) + timedelta(seconds=30)
        headers = {"Retry-After": email.utils.format_datetime(in_30s, usegmt=True)}
    fake_ai.queue(Reply(429, {"error": {"message": "slow down"}}, headers))
    with pytest.raises(TransientError) as limited:
        await _ask(client)
    assert limited.value.retry_after is not None
    assert low <= limited.value.retry_after <= high


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}])
async def test_without_a_usable_retry_after_the_backoff_decides(
    client: AIClient, fake_ai: FakeAI, headers: dict[str, str]
) -> None:
    fake_ai.queue(Reply(503, "busy", headers))
    with pytest.raises(TransientError, match="AI API answered 503: busy") as busy:
        await _ask(client)
    assert busy.value.retry_after is None


async def test_a_200_that_is_not_a_chat_completion_is_permanent(client: AIClient, fake_ai: FakeAI) -> None:
    fake_ai.queue(Reply(200, "<html>welcome to nginx</html>"), Reply(200, {"data": []}))
    for _ in range(2):
        with pytest.raises(
            PermanentError, match="check that AI_BASE_URL is the root of an OpenAI-compatible"
        ):
            await _ask(client)


async def test_an_unreachable_endpoint_is_transient(fake_ai: FakeAI) -> None:
    url = fake_ai.url
    fake_ai.stop()
    ai = AIClient(base_url=url, model="m", timeout=1.0)
    try:
        with pytest.raises(TransientError, match="unreachable: ConnectError"):
            await _ask(ai)
    finally:
        await ai.aclose()


async def test_the_key_is_sent_but_never_shown(client: AIClient, fake_ai: FakeAI) -> None:
    fake_ai.queue(Reply(403, f"key {AI_KEY} has no access"))
    with pytest.raises(PermanentError) as denied:
        await _ask(client)
    assert fake_ai.requests[0].headers["authorization"] == f"Bearer {AI_KEY}"
    assert str(denied.value) == "AI API rejected the request (403): key *** has no access; " + (
        "check AI_API_KEY and the key's access to AI_MODEL"
    )
    settings = make_ai_settings("redis://localhost:6379/0", fake_ai)
    for shown in (repr(client), repr(settings), str(settings), repr(client._http.headers)):
        assert AI_KEY not in shown


async def test_no_key_means_no_authorization_header(fake_ai: FakeAI) -> None:
    fake_ai.queue(completion({"ok": True}))
    ai = AIClient(base_url=fake_ai.url, model="local")
    try:
        await _ask(ai)
    finally:
        await ai.aclose()
    assert "authorization" not in fake_ai.requests[0].headers


async def test_usage_is_read_or_zero_when_the_provider_reports_none(
    client: AIClient, fake_ai: FakeAI
) -> None:
    plain = completion({"ok": True})
    no_usage = dataclasses.replace(plain, body={k: v for k, v in plain.body.items() if k != "usage"})
    partial = dataclasses.replace(
        plain, body={**plain.body, "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    )
    fake_ai.queue(plain, no_usage, partial)
    usages = [(await client.chat_json(MESSAGES, temperature=0, max_tokens=9)).usage for _ in range(3)]
    assert usages == [Usage(120, 30, 150), Usage(), Usage(5, 2, 7)]


async def test_concurrent_requests_are_limited(fake_ai: FakeAI) -> None:
    fake_ai.default = dataclasses.replace(completion({"ok": True}), delay=0.1)
    ai = AIClient(base_url=fake_ai.url, model="m", max_concurrency=2)
    try:
        await asyncio.gather(*(_ask(ai) for _ in range(5)))
    finally:
        await ai.aclose()
    assert len(fake_ai.requests) == 5
    assert fake_ai.max_in_flight == 2


async def test_the_request_budget_spaces_requests_within_the_window() -> None:
    budget = RequestBudget(2, window_s=0.3, max_wait_s=1.0)
    started = time.monotonic()
    for _ in range(3):
        await budget.acquire()
    assert time.monotonic() - started >= 0.29  # the third waited for the first to leave the window


async def test_a_spent_budget_hands_the_wait_to_the_retry_policy(fake_ai: FakeAI) -> None:
    settings = make_ai_settings("redis://localhost:6379/0", fake_ai, ai_requests_per_minute=1)
    fake_ai.default = completion({"ok": True})
    ai = AIClient.from_settings(settings)
    try:
        await _ask(ai)
        with pytest.raises(TransientError, match="AI request budget spent") as spent:
            await _ask(ai)
    finally:
        await ai.aclose()
    assert spent.value.retry_after is not None
    assert 55 < spent.value.retry_after <= 60
    assert len(fake_ai.requests) == 1  # the second request was never sent


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ai_base_url": "https://api.openai.com/v1/chat/completions"},
            "AI_BASE_URL: give the API root, not",
        ),
        ({"ai_base_url": "api.openai.com"}, "AI_BASE_URL: scheme '(none)' is not supported; use http://"),
        (
            {"ai_max_concurrency": 0},
            "AI_MAX_CONCURRENCY: Input should be greater than or equal to 1 (got 0); use",
        ),
        (
            {"ai_requests_per_minute": -1},
            "AI_REQUESTS_PER_MINUTE: Input should be greater than or equal to 0",
        ),
        ({"ai_cache_ttl": "forever"}, "AI_CACHE_TTL: Input should be a valid number"),
        ({"ai_max_output_retries": 11}, "AI_MAX_OUTPUT_RETRIES: Input should be less than or equal to 10"),
        ({"ai_timeout": 0}, "AI_TIMEOUT: Input should be greater than 0 (got 0); use seconds"),
    ],
)
def test_bad_ai_settings_name_the_variable_the_value_and_the_fix(
    env: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError) as bad:
        load_settings(_env_file=None, **env)
    assert message in str(bad.value)


def test_blank_ai_settings_count_as_unset() -> None:
    settings = load_settings(_env_file=None, ai_model=" ", ai_api_key="", ai_base_url="")
    assert (settings.ai_model, settings.ai_api_key, settings.ai_base_url) == (None, None, None)
