"""SMTP delivery against a real aiosmtpd server on loopback, queued and inline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from core.context import Mode
from core.errors import JobFailed
from settings import Settings
from tests.conftest import running_producer
from tests.email_fixtures import (
    SmtpSink,
    TlsFiles,
    email_settings,
    smtp_sink,
    tls_files,
)

__all__ = ["email_settings", "smtp_sink", "tls_files"]  # fixtures used here

SettingsFactory = Callable[..., Settings]
MODES = pytest.mark.parametrize("mode", ["queued", "inline"])

SUBJECT = "Your release “Café del Mar” is live 🎉 " + " and climbing the charts" * 3


def plain_message(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "to": ["Zoë 🎸 Müller <zoe@example.com>"],
        "subject": "Hello",
        "text": "Hi Zoë,\nyour track is live.",
        "html": "<p>Hi Zoë,<br>your track is live.</p>",
    }
    message.update(overrides)
    return message


@pytest.fixture
async def tls_sink(tls_files: TlsFiles) -> AsyncIterator[SmtpSink]:
    sink = await SmtpSink(tls=tls_files, users={"mailer": "s3cr3t-pw"}, auth_required=True).start()
    yield sink
    await sink.stop()


@MODES
async def test_message_arrives_exactly_as_composed(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    message = plain_message(
        to=["Zoë 🎸 Müller <zoe@example.com>", {"email": "b@example.com", "name": "Béyoncé, K"}],
        subject=SUBJECT,
        from_address="Max Booster <hello@maxbooster.example>",
        reply_to={"email": "support@maxbooster.example", "name": "Support"},
        categories=["release", "status:live"],
    )
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_email", {"message": message}, job_id=f"smtp-exact-{mode}")
        result = await handle.result(timeout=10)

    assert result["status"] == "sent"
    assert result["idempotency_key"] == f"smtp-exact-{mode}"
    assert result["transport"] == "smtp"
    [received] = smtp_sink.received
    assert received.mail_from == "hello@maxbooster.example"
    assert received.rcpt_tos == ["zoe@example.com", "b@example.com"]
    raw_headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii()  # non-ASCII travels as RFC 2047 encoded-words
    assert b"=?utf-8?" in raw_headers
    parsed = received.message
    assert parsed["Subject"] == SUBJECT  # spaces between encoded-words survive
    assert parsed["From"].addresses[0].display_name == "Max Booster"
    to = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [
        ("Zoë 🎸 Müller", "zoe@example.com"),
        ("Béyoncé, K", "b@example.com"),
    ]
    assert str(parsed["Reply-To"]) == "Support <support@maxbooster.example>"
    assert parsed["Message-ID"] == result["message_id"]
    assert parsed["Message-ID"].endswith("@maxbooster.example>")
    assert parsed["X-Categories"] == "release, status:live"
    assert parsed["Date"] is not None
    assert parsed.get_content_type() == "multipart/alternative"
    assert received.body("plain") == "Hi Zoë,\nyour track is live."
    assert received.body("html") == "<p>Hi Zoë,<br>your track is live.</p>"


@MODES
async def test_template_over_starttls_with_auth_and_a_self_signed_ca(
    mode: Mode, tls_sink: SmtpSink, tls_files: TlsFiles, email_settings: SettingsFactory
) -> None:
    settings = email_settings(
        email_transport="smtp", smtp_url=tls_sink.url("mailer", "s3cr3t-pw"), smtp_ca_file=str(tls_files.cert)
    )
    context = {
        "firstName": "Zoë <script>alert(1)</script> & Co",
        "resetLink": "https://app.maxbooster.example/reset?token=abc&x=1",
        "expiresIn": "30 minutes",
    }
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job(
            "send_email",
            {"message": {"to": ["zoe@example.com"], "template": "password_reset", "context": context}},
        )
        await handle.result(timeout=10)

    [received] = tls_sink.received
    assert received.tls
    assert received.login == "mailer"
    assert received.message["Subject"] == "Reset your Max Booster password"
    html = received.body("html")
    assert "Hi Zoë &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co," in html  # autoescaped
    assert 'href="https://app.maxbooster.example/reset?token=abc&amp;x=1"' in html
    text = received.body("plain")
    assert text.startswith("Hi Zoë <script>alert(1)</script> & Co,\n")  # text is not HTML
    assert "https://app.maxbooster.example/reset?token=abc&x=1" in text
    assert "expires in 30 minutes" in text


async def test_implicit_tls(tls_files: TlsFiles, email_settings: SettingsFactory) -> None:
    sink = await SmtpSink(tls=tls_files, implicit_tls=True, users={"mailer": "pw"}).start()
    try:
        settings = email_settings(
            email_transport="smtp", smtp_url=sink.url("mailer", "pw"), smtp_ca_file=str(tls_files.cert)
        )
        async with running_producer(settings, "inline") as producer:
            handle = await producer.enqueue_job("send_email", {"message": plain_message()})
            await handle.result(timeout=10)
    finally:
        await sink.stop()
    [received] = sink.received
    assert received.tls
    assert received.login == "mailer"


@MODES
async def test_untrusted_certificate_is_permanent(
    mode: Mode, tls_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=tls_sink.url("mailer", "s3cr3t-pw"))
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_email", {"message": plain_message()})
        with pytest.raises(JobFailed) as failure:
            await handle.result(timeout=10)
    assert failure.value.kind == "permanent"
    assert "certificate is not trusted" in failure.value.message
    assert "SMTP_CA_FILE" in failure.value.message
    assert tls_sink.connections == 1  # not retried
    assert tls_sink.received == []


async def test_verification_can_be_turned_off_for_a_test_server(
    tls_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    url = tls_sink.url("mailer", "s3cr3t-pw")
    settings = email_settings(email_transport="smtp", smtp_url=url, smtp_tls_verify=False)
    async with running_producer(settings, "inline") as producer:
        handle = await producer.enqueue_job("send_email", {"message": plain_message()})
        await handle.result(timeout=10)
    assert [r.tls for r in tls_sink.received] == [True]


async def test_password_never_travels_in_clear_text(email_settings: SettingsFactory) -> None:
    sink = await SmtpSink(users={"mailer": "pw-in-clear"}).start()  # no TLS offered
    try:
        refusing = email_settings(email_transport="smtp", smtp_url=sink.url("mailer", "pw-in-clear"))
        async with running_producer(refusing, "inline") as producer:
            handle = await producer.enqueue_job("send_email", {"message": plain_message()})
            with pytest.raises(JobFailed) as failure:
                await handle.result(timeout=10)
        assert failure.value.kind == "permanent"
        assert "offers no STARTTLS" in failure.value.message
        assert "pw-in-clear" not in failure.value.message
        assert sink.received == []

        # A trusted local relay may opt out explicitly.
        trusting = email_settings(
            email_transport="smtp", smtp_url=sink.url("mailer", "pw-in-clear"), smtp_starttls="off"
        )
        async with running_producer(trusting, "inline") as producer:
            handle = await producer.enqueue_job("send_email", {"message": plain_message()})
            await handle.result(timeout=10)
        assert [r.login for r in sink.received] == ["mailer"]
    finally:
        await sink.stop()


@MODES
async def test_wrong_password_is_permanent_and_not_shown(
    mode: Mode, tls_sink: SmtpSink, tls_files: TlsFiles, email_settings: SettingsFactory
) -> None:
    settings = email_settings(
        email_transport="smtp",
        smtp_url=tls_sink.url("mailer", "wrong-pw-9"),
        smtp_ca_file=str(tls_files.cert),
    )
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_email", {"message": plain_message()})
        with pytest.raises(JobFailed) as failure:
            await handle.result(timeout=10)
    assert failure.value.kind == "permanent"
    assert "535" in failure.value.message
    assert "SMTP_URL" in failure.value.message
    assert "wrong-pw-9" not in failure.value.message
    assert tls_sink.connections == 1


@MODES
async def test_connection_is_reused_across_jobs_and_reopened_when_dropped(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    async with running_producer(settings, mode) as producer:
        for n in range(3):
            handle = await producer.enqueue_job("send_email", {"message": plain_message(subject=f"n{n}")})
            await handle.result(timeout=10)
        assert smtp_sink.connections == 1
        smtp_sink.drop_connections()  # the server closes the idle pooled connection
        await asyncio.sleep(0.05)
        handle = await producer.enqueue_job("send_email", {"message": plain_message(subject="after drop")})
        await handle.result(timeout=10)
    assert smtp_sink.connections == 2
    assert [r.message["Subject"] for r in smtp_sink.received] == ["n0", "n1", "n2", "after drop"]


@MODES
async def test_4xx_replies_are_retried(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    smtp_sink.data_replies.append("451 4.3.0 Mail server temporarily rejected message")
    smtp_sink.refuse_once["zoe@example.com"] = "450 4.2.1 Mailbox busy, try again"
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_email", {"message": plain_message()})
        result = await handle.result(timeout=10)
    assert result["status"] == "sent"
    assert len(smtp_sink.received) == 1


@MODES
async def test_5xx_is_permanent_with_the_servers_reason(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    smtp_sink.data_replies.extend(["554 5.7.1 Message rejected as spam"] * 3)
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_email", {"message": plain_message()})
        with pytest.raises(JobFailed) as failure:
            await handle.result(timeout=10)
    assert failure.value.kind == "permanent"
    assert "554 5.7.1 Message rejected as spam" in failure.value.message
    assert len(smtp_sink.data_replies) == 2  # tried once


async def test_one_refused_recipient_does_not_stop_the_others(
    smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    smtp_sink.refuse["gone@example.com"] = "550 5.1.1 No such user"
    async with running_producer(settings, "inline") as producer:
        handle = await producer.enqueue_job(
            "send_email", {"message": plain_message(to=["zoe@example.com", "gone@example.com"])}
        )
        result = await handle.result(timeout=10)
    assert result["refused"] == {"gone@example.com": "550 5.1.1 No such user"}
    assert [r.rcpt_tos for r in smtp_sink.received] == [["zoe@example.com"]]


@MODES
async def test_a_server_that_never_answers_times_out_as_transient(
    mode: Mode, email_settings: SettingsFactory
) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greet
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = email_settings(email_transport="smtp", smtp_url=f"smtp://127.0.0.1:{port}", smtp_timeout=0.1)
    try:
        async with running_producer(settings, mode) as producer:
            handle = await producer.enqueue_job("send_email", {"message": plain_message()})
            with pytest.raises(JobFailed) as failure:
                await handle.result(timeout=15)
    finally:
        server.close()
    assert failure.value.kind == "transient"  # retried until max_tries ran out
    assert "Timed out" in failure.value.message


async def test_file_transport_writes_eml_files(tmp_path: Path, email_settings: SettingsFactory) -> None:
    settings = email_settings(email_file_dir=str(tmp_path / "mail"))
    assert settings.email_transport_resolved == "file"
    async with running_producer(settings, "inline") as producer:
        handle = await producer.enqueue_job("send_email", {"message": plain_message(subject=SUBJECT)})
        result = await handle.result(timeout=10)
    [path] = (tmp_path / "mail").glob("*.eml")
    import email as stdlib_email
    import email.policy

    parsed = stdlib_email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == SUBJECT
    assert parsed["Message-ID"] == result["message_id"]
    assert result["transport"] == "file"


@MODES
async def test_a_platform_email_links_under_app_url_when_the_caller_gives_no_link(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url(), app_url="https://mb.test/")
    context = {"userName": "Zoë", "ticketSubject": "Payout", "ticketId": "tk_9", "newStatus": "closed"}
    message = {"to": ["zoe@example.com"], "template": "support_ticket_status", "context": context}
    async with running_producer(settings, mode) as producer:
        await (await producer.enqueue_job("send_email", {"message": message})).result(timeout=10)
    [received] = smtp_sink.received
    assert received.message["Subject"] == "Your support ticket is closed: Payout"
    assert "See your ticket: https://mb.test/support/tickets/tk_9" in received.body("plain")
    assert 'href="https://mb.test/support/tickets/tk_9"' in received.body("html")
