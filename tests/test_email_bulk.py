"""send_bulk_email: one copy per recipient, per-recipient outcomes, each copy sent once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.context import Mode
from core.errors import JobFailed
from settings import Settings
from tests.conftest import running_producer
from tests.email_fixtures import (
    FakeSendGrid,
    Reply,
    SmtpSink,
    email_settings,
    sendgrid_server,
    smtp_sink,
)

__all__ = ["email_settings", "sendgrid_server", "smtp_sink"]  # fixtures used here

SettingsFactory = Callable[..., Settings]
MODES = pytest.mark.parametrize("mode", ["queued", "inline"])


def digest(recipients: list[Any]) -> dict[str, Any]:
    return {
        "recipients": recipients,
        "template": "weekly_digest",
        "context": {
            "userName": "there",
            "weekLabel": "17 to 23 November",
            "streamsThisWeek": 1200,
            "newFollowers": 14,
            "dashboardUrl": "https://app.maxbooster.example/insights",
        },
        "categories": ["digest"],
    }


async def run_bulk(mode: Mode, settings: Settings, message: dict[str, Any], key: str) -> Any:
    async with running_producer(settings, mode) as producer:
        handle = await producer.enqueue_job("send_bulk_email", {"message": message, "idempotency_key": key})
        return await handle.result(timeout=30)


@MODES
async def test_smtp_bulk_reports_each_recipient_over_one_connection(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    recipients = [
        "Zoë <zoe@example.com>",
        "b@example.com",
        "gone@example.com",
        "busy@example.com",
        "e@example.com",
    ]
    smtp_sink.refuse["gone@example.com"] = "550 5.1.1 No such user"
    smtp_sink.refuse_once["busy@example.com"] = "450 4.2.1 Mailbox busy"
    key = f"digest-2026-w47-{mode}"

    result = await run_bulk(mode, settings, digest(recipients), key)

    # Try 1 sent three and deferred the busy one; try 2 delivered it; the 550 was not retried.
    rows = {row["email"]: row for row in result["recipients"]}
    assert [row["email"] for row in result["recipients"]] == [
        "zoe@example.com",
        "b@example.com",
        "gone@example.com",
        "busy@example.com",
        "e@example.com",
    ]
    assert rows["busy@example.com"]["status"] == "sent"
    assert rows["gone@example.com"]["status"] == "failed"
    assert "550 5.1.1 No such user" in rows["gone@example.com"]["error"]
    assert {rows[e]["status"] for e in ("zoe@example.com", "b@example.com", "e@example.com")} == {
        "already_sent"
    }
    assert result["counts"] == {"sent": 1, "already_sent": 3, "failed": 1, "deferred": 0}
    assert result["status"] == "partial"
    assert smtp_sink.connections == 1  # every copy, both tries, over one connection

    received = sorted(smtp_sink.received, key=lambda r: r.rcpt_tos[0])
    assert [r.rcpt_tos for r in received] == [
        ["b@example.com"],
        ["busy@example.com"],
        ["e@example.com"],
        ["zoe@example.com"],
    ]
    for copy in received:  # each recipient sees only themselves, with their own Message-ID
        assert [a.addr_spec for a in copy.message["To"].addresses] == copy.rcpt_tos
        assert copy.message["Subject"] == "Your week on Max Booster: 17 to 23 November"
    assert len({r.message["Message-ID"] for r in received}) == 4

    # Running the same bulk key again sends nothing new.
    again = await run_bulk(mode, settings, digest(recipients), key)
    assert again["counts"] == {"sent": 0, "already_sent": 4, "failed": 1, "deferred": 0}
    assert len(smtp_sink.received) == 4


@MODES
async def test_sendgrid_bulk_splits_at_1000_personalizations(
    mode: Mode, sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = email_settings(sendgrid_api_key="SG.bulk", sendgrid_api_host=sendgrid_server.url)
    recipients = [f"fan{n}@example.com" for n in range(2500)]
    key = f"digest-sendgrid-{mode}"

    result = await run_bulk(mode, settings, digest(recipients), key)

    assert [len(r.json["personalizations"]) for r in sendgrid_server.requests] == [1000, 1000, 500]
    first = sendgrid_server.requests[0].json["personalizations"][0]
    assert first == {
        "to": [{"email": "fan0@example.com"}],
        "custom_args": {"idempotency_key": f"{key}/fan0@example.com"},
    }
    assert result["counts"] == {"sent": 2500, "already_sent": 0, "failed": 0, "deferred": 0}
    assert result["status"] == "complete"

    again = await run_bulk(mode, settings, digest(recipients), key)
    assert again["counts"]["already_sent"] == 2500
    assert len(sendgrid_server.requests) == 3


async def test_sendgrid_bulk_resumes_after_a_failed_batch(
    sendgrid_server: FakeSendGrid, email_settings: SettingsFactory
) -> None:
    settings = email_settings(sendgrid_api_key="SG.bulk", sendgrid_api_host=sendgrid_server.url)
    recipients = [f"fan{n}@example.com" for n in range(1500)]
    # First batch accepted, second refused with a 503: the retry sends only the second batch.
    sendgrid_server.replies.extend([Reply(202), Reply(503, {"errors": [{"message": "busy"}]})])

    result = await run_bulk("inline", settings, digest(recipients), "digest-resume")

    sizes = [len(r.json["personalizations"]) for r in sendgrid_server.requests]
    assert sizes == [1000, 500, 500]
    assert result["counts"] == {"sent": 500, "already_sent": 1000, "failed": 0, "deferred": 0}


async def test_bulk_refused_for_everyone_fails_permanently(
    smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    smtp_sink.refuse.update({"a@example.com": "550 no", "b@example.com": "550 no"})
    with pytest.raises(JobFailed) as failure:
        await run_bulk("inline", settings, digest(["a@example.com", "b@example.com"]), "digest-refused")
    assert failure.value.kind == "permanent"
    assert "no recipient accepted the message" in failure.value.message
    assert "0 of 2 recipients delivered" in failure.value.message
