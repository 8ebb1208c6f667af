"""SendGrid delivery: the real SDK against a loopback server that speaks v3 mail/send."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core.context import Mode
from core.errors import JobFailed
from settings import Settings
from tests.conftest import make_settings, running_producer
from tests.email_fixtures import FakeSendGrid, Reply, email_settings, sendgrid_server
from worker.telemetry import configure_logging

__all__ = ["email_settings", "sendgrid_server"]  # fixtures used here

SettingsFactory = Callable[..., Settings]
MODES = pytest.mark.parametrize("mode", ["queued", "inline"])
API_KEY = "SG.test-key-do-not-log-4f2a"


def sendgrid_settings(factory: SettingsFactory, server: FakeSendGrid, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"sendgrid_api_key": API_KEY, "sendgrid_api_host": server.url}
    values.update(overrides)
    return factory(**values)


def message(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "to": [{"email": "zoe@example.com", "name": "Zoë 🎸"}],
        "subject": "Your release “Café del Mar” is live",
        "text": "It is live.",
        "html": "<p>It is live.</p>",
    }
    value.update(overrides)
    return value


async def send(mode: Mode, settings: Settings, body: dict[str, Any], **enqueue: Any) -> Any:
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_email", {"message": body}, **enqueue)
        return await handle.result(timeout=15)


async def send_expecting_failure(mode: Mode, settings: Settings, body: dict[str, Any]) -> JobFailed:
    with pytest.raises(JobFailed) as failure:
        await send(mode, settings, body)
    return failure.value


@MODES
async def test_success_sends_the_v3_body(
    mode: Mode, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server)
    assert settings.email_transport_resolved == "sendgrid"
    body = message(
        from_address="Max Booster <hello@maxbooster.example>",
        reply_to="support@maxbooster.example",
        categories=["release"],
    )
    result = await send(mode, settings, body, job_id=f"sg-ok-{mode}")

    [request] = sendgrid_server.requests
    assert request.path == "/v3/mail/send"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.json == {
        "personalizations": [
            {
                "to": [{"email": "zoe@example.com", "name": "Zoë 🎸"}],
                "custom_args": {"idempotency_key": f"sg-ok-{mode}"},
            }
        ],
        "from": {"email": "hello@maxbooster.example", "name": "Max Booster"},
        "reply_to": {"email": "support@maxbooster.example"},
        "subject": "Your release “Café del Mar” is live",
        "content": [
            {"type": "text/plain", "value": "It is live."},
            {"type": "text/html", "value": "<p>It is live.</p>"},
        ],
        "categories": ["release"],
    }
    assert result["status"] == "sent"
    assert result["transport"] == "sendgrid"
    assert result["message_id"].startswith("sg-1-")  # SendGrid's X-Message-Id


@MODES
async def test_429_waits_for_retry_after(
    mode: Mode, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server, retry_backoff_max=5.0)
    sendgrid_server.replies.append(
        Reply(429, {"errors": [{"message": "too many requests"}]}, headers={"Retry-After": "1"})
    )
    result = await send(mode, settings, message())
    first, second = sendgrid_server.requests
    assert second.at - first.at >= 1.0
    assert result["status"] == "sent"


@MODES
async def test_500_is_retried(
    mode: Mode, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server)
    sendgrid_server.replies.extend([Reply(500), Reply(503, {"errors": [{"message": "unavailable"}]})])
    result = await send(mode, settings, message())
    assert len(sendgrid_server.requests) == 3
    assert result["status"] == "sent"


@MODES
@pytest.mark.parametrize(
    ("status", "errors", "expected"),
    [
        (400, [{"message": "The from address does not match a verified Sender", "field": "from"}],
         "SendGrid answered 400 Bad Request: The from address does not match a verified Sender (field from)"),
        (401, [{"message": "The provided authorization grant is invalid, expired, or revoked"}],
         "SendGrid answered 401 Unauthorized: The provided authorization grant is invalid"),
        (403, [{"message": "access forbidden"}], "SendGrid answered 403 Forbidden: access forbidden"),
        (413, [{"message": "payload too large"}], "SendGrid answered 413"),
    ],
)  # fmt: skip
async def test_refusals_are_permanent_with_sendgrids_reason(
    mode: Mode,
    status: int,
    errors: list[dict[str, str]],
    expected: str,
    sendgrid_server: FakeSendGrid,
    email_settings: SettingsFactory,
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server)
    sendgrid_server.replies.extend([Reply(status, {"errors": errors})] * 3)
    failure = await send_expecting_failure(mode, settings, message())
    assert failure.kind == "permanent"
    assert expected in failure.message
    assert API_KEY not in failure.message
    assert len(sendgrid_server.requests) == 1  # not retried


@MODES
async def test_slow_response_times_out_and_is_retried(
    mode: Mode, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server, sendgrid_timeout=0.3)
    sendgrid_server.replies.append(Reply(delay=2.0))
    result = await send(mode, settings, message())
    assert len(sendgrid_server.requests) == 2
    assert result["status"] == "sent"


async def test_timeout_exhausting_retries_is_a_transient_failure(
    sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server, sendgrid_timeout=0.1)
    sendgrid_server.replies.extend([Reply(delay=0.5)] * 6)
    failure = await send_expecting_failure("inline", settings, message())
    assert failure.kind == "transient"
    assert "did not answer within 0.1s (SENDGRID_TIMEOUT)" in failure.message


@pytest.fixture
def restore_logging() -> Iterator[None]:
    http_logger = logging.getLogger("python_http_client")
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), http_logger.level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    http_logger.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("force_sdk_debug", [False, True], ids=["configured", "sdk-logger-forced-to-debug"])
async def test_api_key_never_reaches_the_logs_even_at_debug(
    force_sdk_debug: bool, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    stream = io.StringIO()
    configure_logging(make_settings("redis://localhost:1/0", log_level="DEBUG"), stream=stream)
    logging.getLogger().setLevel(logging.DEBUG)
    if force_sdk_debug:  # someone else's logging setup: the SDK logs its request headers
        logging.getLogger("python_http_client").setLevel(logging.DEBUG)
    settings = sendgrid_settings(email_settings, sendgrid_server, log_level="DEBUG")
    sendgrid_server.replies.append(Reply(401, {"errors": [{"message": "bad key"}]}))
    await send_expecting_failure("inline", settings, message())
    await send("inline", settings, message())

    output = stream.getvalue()
    assert "SendGrid answered 401" in output
    assert API_KEY not in output
    if force_sdk_debug:
        assert "HEADERS" in output  # the SDK did log its headers, with the key masked
        assert "***" in output


@MODES
async def test_a_provider_error_that_quotes_the_key_is_scrubbed_everywhere(
    mode: Mode, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory, log_output: io.StringIO
) -> None:
    settings = sendgrid_settings(email_settings, sendgrid_server)
    echoed = f"invalid key {API_KEY} for this account"
    sendgrid_server.replies.append(Reply(400, {"errors": [{"message": echoed}]}))
    failure = await send_expecting_failure(mode, settings, message())
    async with running_producer(settings, "inline") as producer:
        letter = await producer.ledger.dead_letter_of(failure.job_id)
    assert API_KEY not in failure.message
    assert "invalid key *** for this account" in failure.message
    assert letter is not None
    assert API_KEY not in str(letter.error)
    assert API_KEY not in log_output.getvalue()
