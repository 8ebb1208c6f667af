"""Refused at enqueue time, in both modes: nothing is queued, run or sent, and the error says why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from core.context import Mode
from core.errors import JobValidationError
from jobs.email import Email, send_email
from jobs.email.headers import header_problem
from settings import Settings
from tests.conftest import raw_redis, running_producer
from tests.email_fixtures import SmtpSink, email_settings, smtp_sink
from worker.producer import Producer

__all__ = ["email_settings", "smtp_sink"]  # fixtures used here

SettingsFactory = Callable[..., Settings]


@pytest.fixture(params=["queued", "inline"])
async def producer(
    request: pytest.FixtureRequest, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> AsyncIterator[Producer]:
    mode: Mode = request.param
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    async with running_producer(settings, mode) as running:
        yield running


def base(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"to": ["zoe@example.com"], "subject": "Hello", "text": "Hi"}
    message.update(overrides)
    return message


async def refused(producer: Producer, job: str, args: dict[str, Any]) -> str:
    with pytest.raises(JobValidationError) as error:
        await producer.enqueue_job(job, args)
    if producer.backend.usable:
        assert await raw_redis(producer.settings).zcard(producer.settings.queue_name) == 0
    return str(error.value)


INJECTIONS = [
    # (where, message overrides, field named in the error, problem)
    ("subject, raw CRLF", {"subject": "Hi\r\nBcc: victim@example.com"}, "message.subject", "line break"),
    ("subject, bare LF", {"subject": "Hi\nBcc: victim@example.com"}, "message.subject", "line break"),
    ("subject, Unicode line separator", {"subject": "Hi\u2028Bcc: x@x.com"}, "message.subject", "U+2028"),
    ("subject, Q-encoded CRLF", {"subject": "=?utf-8?q?Hi=0D=0ABcc:_x@example.com?="}, "message.subject",
     "encoded line break"),
    ("subject, B-encoded CRLF", {"subject": "=?UTF-8?B?SGkNCkJjYzogeEB4LmNvbQ==?="}, "message.subject",
     "encoded line break"),
    ("subject, encoded-word inside an encoded-word", {"subject": "=?utf-8?b?PT91dGYtOD9xP2E9MEFiPz0=?="},
     "message.subject", "encoded line break"),
    ("name, raw LF", {"to": [{"email": "zoe@example.com", "name": "Zoë\nBcc: x@example.com"}]},
     "message.to.0.name", "line break"),
    ("name, encoded", {"to": [{"email": "zoe@example.com", "name": "=?utf-8?q?Zo=0Ae?="}]},
     "message.to.0.name", "encoded line break"),
    ("name in the text form", {"to": ["Zoë\r\nBcc: x@example.com <zoe@example.com>"]}, "message.to.0",
     "line break"),
    ("address, raw CRLF", {"to": ["zoe@example.com\r\nBcc: x@example.com"]}, "message.to.0", "line break"),
    ("address, encoded local part", {"to": ["=?utf-8?q?a=0D=0A?=@example.com"]}, "message.to.0",
     "encoded line break"),
    ("reply-to", {"reply_to": {"email": "r@x.com", "name": "R\rX"}}, "message.reply_to.name", "line break"),
    ("from", {"from_address": "Max\n <hello@maxbooster.example>"}, "message.from_address", "line break"),
    ("category", {"categories": ["receipts\r\nX-Evil: 1"]}, "message.categories.0", "line break"),
    ("undecodable encoded-word", {"subject": "=?utf-8?b?@@@@?="}, "message.subject", "does not decode"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "field", "problem"), [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS]
)
async def test_header_injection_is_refused(
    producer: Producer, smtp_sink: SmtpSink, overrides: dict[str, Any], field: str, problem: str
) -> None:
    error = await refused(producer, "send_email", {"message": base(**overrides)})
    assert f"argument '{field}'" in error
    assert problem in error
    assert smtp_sink.received == []
    assert smtp_sink.connections == 0


async def test_header_injection_in_bulk_recipients_is_refused(producer: Producer) -> None:
    recipients = ["a@example.com", {"email": "b@example.com", "name": "B\r\nBcc: x@example.com"}]
    message = {"recipients": recipients, "subject": "Weekly digest", "text": "Hi"}
    error = await refused(producer, "send_bulk_email", {"message": message})
    assert "argument 'message.recipients.1.name'" in error


async def test_template_context_that_injects_into_the_subject_is_refused(producer: Producer) -> None:
    context = {"firstName": "Zoë\r\nBcc: x@example.com", "dashboardUrl": "https://app.maxbooster.example/"}
    message = {"to": ["zoe@example.com"], "template": "welcome", "context": context}
    error = await refused(producer, "send_email", {"message": message})
    assert "template 'welcome': the rendered subject contains a line break" in error


CASES = [
    ("not an address", {"to": ["not-an-address"]}, "argument 'message.to.0.email'", "must have an @-sign"),
    ("reserved domain", {"to": ["zoe@maxbooster.local"]}, "argument 'message.to.0.email'", "special-use"),
    ("non-ASCII local part", {"to": ["zoë@example.com"]}, "argument 'message.to.0.email'",
     "Internationalized characters before the @-sign"),
    ("no recipient", {"to": []}, "argument 'message.to'", "at least 1 item"),
    ("51 recipients", {"to": [f"fan{n}@example.com" for n in range(51)]}, "argument 'message.to'",
     "at most 50 items"),
    ("the same recipient twice", {"to": ["zoe@example.com", "zoe@EXAMPLE.com"]}, "argument 'message'",
     "zoe@example.com appears twice"),
    ("no body", {"text": None}, "argument 'message'", "no body: give 'text' and/or 'html', or a 'template'"),
    ("no subject", {"subject": None}, "argument 'message'", "'subject' is required"),
    ("blank subject", {"subject": "   "}, "argument 'message.subject'", "is empty"),
    ("long subject", {"subject": "x" * 256}, "argument 'message.subject'", "over the 255-character limit"),
    ("huge body", {"html": "<p>" + "x" * 140_000}, "argument 'message.html'", "over the 131072-byte limit"),
    ("template and bodies", {"template": "welcome"}, "argument 'message'", "not both"),
    ("context without template", {"context": {"a": 1}}, "argument 'message'", "only used with a 'template'"),
    ("unknown template", {"text": None, "subject": None, "template": "newsletter"},
     "argument 'message.template'", "Input should be 'welcome'"),
    ("bad category", {"categories": ["<script>"]}, "argument 'message.categories.0'", "is not a category"),
    ("eleven categories", {"categories": [f"c{n}" for n in range(11)]}, "argument 'message.categories'",
     "at most 10 items"),
    ("unknown field", {"bcc": ["x@example.com"]}, "unknown argument 'message.bcc'", ""),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "field", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_messages_are_refused_naming_field_and_problem(
    producer: Producer, smtp_sink: SmtpSink, overrides: dict[str, Any], field: str, problem: str
) -> None:
    error = await refused(producer, "send_email", {"message": base(**overrides)})
    assert error.startswith("send_email: ")
    assert field in error
    assert problem in error
    assert smtp_sink.received == []


async def test_template_missing_a_variable_is_refused_naming_both(producer: Producer) -> None:
    message = {"to": ["zoe@example.com"], "template": "password_reset", "context": {"firstName": "Zoë"}}
    error = await refused(producer, "send_email", {"message": message})
    assert "template 'password_reset': context 'resetLink' is required" in error


@pytest.mark.parametrize(
    ("key", "problem"),
    [("", "at least 1 character"), ("   ", "is blank"), ("k" * 201, "at most 200"), ("a\nb", "line break")],
)
async def test_bad_idempotency_keys_are_refused(producer: Producer, key: str, problem: str) -> None:
    error = await refused(producer, "send_email", {"message": base(), "idempotency_key": key})
    assert "argument 'idempotency_key'" in error
    assert problem in error


async def test_enqueue_with_a_typed_message_object(producer: Producer, smtp_sink: SmtpSink) -> None:
    handle = await producer.enqueue(send_email, message=Email.model_validate(base()), idempotency_key=None)
    result = await handle.result(timeout=10)
    assert result["status"] == "sent"
    assert len(smtp_sink.received) == 1


@pytest.mark.parametrize(
    "value",
    ["Zoë 🎸 & Co", "Björk, Sigur Rós", "=?utf-8?q?Caf=C3=A9?=", "tab\tfree? no", "a=?b", "?=", "= ? x ? ="],
)
def test_ordinary_header_text_passes_or_names_its_problem(value: str) -> None:
    problem = header_problem(value)
    if "\t" in value:
        assert problem == "contains a control character (U+0009)"
    else:
        assert problem is None
