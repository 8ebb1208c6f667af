"""The platform's emails: every template renders what the platform sends (its camelCase names),
HTML is escaped, text is not, and a bad context is refused at enqueue naming the field."""

from __future__ import annotations

from importlib import resources
from typing import Any, get_args

import pytest

from core.errors import JobValidationError, PermanentError
from jobs import REGISTRY
from jobs.email.contexts import TEMPLATE_CONTEXTS
from jobs.email.templates import PLANS, TemplateName, TemplateRenderError, render_template

ARTIST = "Zoë <b>Müller</b> & “The Band”"
ESCAPED = "Zoë &lt;b&gt;Müller&lt;/b&gt; &amp; “The Band”"
LINK = "https://app.maxbooster.example/path?a=1&b=2"

# What the platform's code passes for each email (see its emailService), names and all; the
# person's name is the hostile string, to check escaping.
CONTEXTS: dict[str, dict[str, Any]] = {
    "welcome": {"firstName": ARTIST, "email": "zoe@example.com"},
    "email_verification": {"firstName": ARTIST, "verifyLink": LINK, "expiresIn": "24 hours"},
    "password_reset": {"firstName": ARTIST, "resetLink": LINK, "expiresIn": "1 hour"},
    "subscription_confirmation": {
        "firstName": ARTIST,
        "plan": "Pro",
        "amount": "$49",
        "nextBillingDate": "December 29, 2026",
    },
    "payment_receipt": {"firstName": ARTIST, "plan": "Pro", "amount": "$49"},
    "payment_failed": {"firstName": ARTIST, "plan": "yearly"},
    "release_status": {
        "firstName": ARTIST,
        "releaseName": "Café del Mar",
        "platforms": ["Spotify", "Apple Music"],
        "status": "processing",
    },
    "collaboration_invite": {
        "inviterName": ARTIST,
        "inviterEmail": "sam@example.com",
        "projectName": "Night Drive (remix)",
        "role": "Producer",
    },
    "team_invite": {"inviterName": ARTIST, "inviterEmail": "sam@example.com", "role": "admin"},
    "general_invite": {"inviterName": ARTIST, "inviterEmail": "sam@example.com"},
    "support_ticket_created": {"userName": ARTIST, "ticketSubject": "Payout missing", "ticketId": "tk_42"},
    "support_ticket_replied": {
        "userName": ARTIST,
        "ticketSubject": "Payout missing",
        "ticketId": "tk_42",
        "replyMessage": "We found it: it goes out on Friday.",
    },
    "support_ticket_status": {
        "userName": ARTIST,
        "ticketSubject": "Payout missing",
        "ticketId": "tk_42",
        "newStatus": "resolved",
    },
    "weekly_digest": {
        "userName": ARTIST,
        "userEmail": "zoe@example.com",
        "userId": "u1",
        "streamsThisWeek": 12345,
        "streamsLastWeek": 11000,
        "streamsChange": 1345,
        "streamsChangePercent": 12,
        "topTrack": {"title": "Night Drive", "streams": 9000},
        "newFollowers": 87,
        "revenueEarned": 42.5,
        "achievementsUnlocked": [{"name": "10k club", "description": "10,000 streams", "icon": "🏆"}],
        "aiRecommendation": {"title": "Pitch to playlists", "description": "Your saves doubled."},
        "upcomingPosts": [{"platform": "instagram", "scheduledAt": "Mon 10:00", "content": "New single"}],
    },
}


def _body(name: str, **change: Any) -> dict[str, Any]:
    return {k: v for k, v in {**CONTEXTS[name], **change}.items() if v is not None}


def test_every_template_name_has_its_three_files_and_a_context_model() -> None:
    folder = resources.files("jobs.email") / "templates"
    for name in get_args(TemplateName):
        for suffix in (".subject.txt", ".txt", ".html"):
            assert (folder / f"{name}{suffix}").is_file(), f"{name}{suffix} is missing"
    assert set(CONTEXTS) == set(get_args(TemplateName)) == set(TEMPLATE_CONTEXTS)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_each_template_renders_what_the_platform_sends(name: str) -> None:
    rendered = render_template(name, CONTEXTS[name])
    assert rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.text is not None
    assert rendered.html is not None
    assert ARTIST in rendered.text  # text is not HTML: nothing escaped
    assert ESCAPED in rendered.html
    assert "<b>Müller</b>" not in rendered.html
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert "Max Booster" in rendered.html
    assert "None" not in rendered.text  # no optional field leaks as "None"


@pytest.mark.parametrize("status", ["submitted", "processing", "live", "failed"])
def test_every_distribution_status_of_the_platform_is_accepted_at_enqueue(status: str) -> None:
    context = _body("release_status", status=status, errorMessage="Cover art is 500 px; 3000 px needed")
    message = {"to": ["zoe@example.com"], "template": "release_status", "context": context}
    payload = REGISTRY.get("send_email").payload({"message": message}, max_bytes=1 << 20)
    assert payload["message"]["context"]["status"] == status
    rendered = render_template("release_status", context)
    assert rendered.text is not None
    assert "Platforms: Spotify, Apple Music" in rendered.text
    # The error is shown only when distribution failed.
    assert ("Cover art is 500 px" in rendered.text) is (status == "failed")


def test_a_failed_release_says_so_in_the_subject_and_shows_the_error_escaped() -> None:
    context = _body("release_status", status="failed", errorMessage="<script>x</script> bad ISRC")
    rendered = render_template("release_status", context)
    assert rendered.subject == "Distribution failed: Café del Mar"
    assert rendered.html is not None
    assert "&lt;script&gt;x&lt;/script&gt; bad ISRC" in rendered.html


def test_a_payment_receipt_needs_only_what_the_platform_has() -> None:
    rendered = render_template("payment_receipt", CONTEXTS["payment_receipt"])
    assert rendered.text is not None
    assert "Plan:     Max Booster Pro" in rendered.text
    assert "Amount:   $49" in rendered.text
    assert "Access:   lifetime, no further bills" in rendered.text  # no nextBillingDate
    assert rendered.subject == "Your Max Booster receipt"
    detailed = render_template(
        "payment_receipt",
        {**CONTEXTS["payment_receipt"], "invoiceNumber": "MB-42", "cardLast4": "4242", "receiptUrl": LINK},
    )
    assert detailed.text is not None
    assert "Card:     ending in 4242" in detailed.text
    assert detailed.subject == "Your Max Booster receipt MB-42"


@pytest.mark.parametrize(
    ("plan", "price", "billing"),
    [
        ("monthly", "$49", "per month"),
        ("yearly", "$468", "per year"),
        ("lifetime", "$699", "one-time payment"),
    ],
)
def test_a_known_plan_needs_no_amount(plan: str, price: str, billing: str) -> None:
    rendered = render_template("subscription_confirmation", {"firstName": "Zoë", "plan": plan})
    assert rendered.text is not None
    assert f"Amount:   {price} ({billing})" in rendered.text
    assert PLANS[plan].price == price


def test_the_subscription_confirmation_shows_the_next_bill_or_lifetime_access() -> None:
    renews = render_template("subscription_confirmation", CONTEXTS["subscription_confirmation"])
    assert renews.text is not None
    assert "Renews:   December 29, 2026" in renews.text
    assert renews.subject == "Your Max Booster Pro subscription is active"
    lifetime = render_template(
        "subscription_confirmation", _body("subscription_confirmation", nextBillingDate=None)
    )
    assert lifetime.text is not None
    assert "lifetime, no further bills" in lifetime.text


def test_invitations_name_the_inviter_project_and_role_and_link_to_the_app() -> None:
    collab = render_template(
        "collaboration_invite", CONTEXTS["collaboration_invite"], app_url="https://mb.test"
    )
    assert collab.subject == f'{ARTIST} invited you to collaborate on "Night Drive (remix)"'
    assert collab.text is not None
    assert "as Producer" in collab.text
    assert "sam@example.com" in collab.text
    assert "Accept the invitation: https://mb.test\n" in collab.text
    team = render_template("team_invite", {**CONTEXTS["team_invite"], "inviteLink": LINK})
    assert team.subject == f"{ARTIST} invited you to join their team on Max Booster"
    assert team.text is not None
    assert LINK in team.text
    default_role = render_template("collaboration_invite", _body("collaboration_invite", role=None))
    assert default_role.text is not None
    assert "as Collaborator" in default_role.text
    general = render_template("general_invite", CONTEXTS["general_invite"], app_url="https://mb.test")
    assert general.text is not None
    assert "https://mb.test/pricing" in general.text


def test_support_ticket_emails_link_to_the_ticket_and_describe_the_status() -> None:
    created = render_template(
        "support_ticket_created", CONTEXTS["support_ticket_created"], app_url="https://mb.test"
    )
    assert created.subject == "We received your support ticket: Payout missing"
    assert created.text is not None
    assert "https://mb.test/support/tickets/tk_42" in created.text
    long_reply = "word " * 400
    replied = render_template(
        "support_ticket_replied", _body("support_ticket_replied", replyMessage=long_reply)
    )
    assert replied.text is not None
    assert "word word" in replied.text
    assert "…" in replied.text  # quoted in part; the link has the rest
    status = render_template("support_ticket_status", CONTEXTS["support_ticket_status"])
    assert status.subject == "Your support ticket is resolved: Payout missing"
    other = render_template(
        "support_ticket_status", _body("support_ticket_status", newStatus="waiting_on_customer")
    )
    assert other.text is not None
    assert "Its status has been updated to waiting on customer." in other.text


def test_the_weekly_digest_renders_the_platforms_weekly_report() -> None:
    rendered = render_template("weekly_digest", CONTEXTS["weekly_digest"])
    assert rendered.text is not None
    assert "12,345 (+12% on last week)" in rendered.text
    assert "1. Night Drive (9,000 streams)" in rendered.text
    assert "Revenue:          $42.50" in rendered.text
    assert "Recommended next step: Pitch to playlists" in rendered.text
    assert rendered.subject == "Your week in music on Max Booster"
    with_narrative = render_template(
        "weekly_digest",
        {**CONTEXTS["weekly_digest"], "weekLabel": "23 to 29 November",
         "narrative": {"headline": "Your best week yet", "narrative": "Streams up 12%."}},
    )  # fmt: skip
    assert with_narrative.subject == "Your week on Max Booster: 23 to 29 November"
    assert with_narrative.html is not None
    assert "Your best week yet" in with_narrative.html


def test_older_names_of_ours_still_work() -> None:
    rendered = render_template("password_reset", {"name": "Zoë", "reset_url": LINK})
    assert rendered.text is not None
    assert "Hi Zoë," in rendered.text
    assert "expires in 1 hour" in rendered.text


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("password_reset", {"resetLink": None}, "context 'resetLink' is required"),
        ("password_reset", {"resetUrl": LINK}, "field 'resetUrl' (it takes firstName, resetLink, expiresIn)"),
        ("subscription_confirmation", {"amount": None}, "'amount' is required for plan 'Pro'"),
        ("release_status", {"status": "viral"}, "'status': Input should be 'submitted', 'processing'"),
        ("welcome", {"dashboardUrl": "javascript:alert(1)"}, "'javascript:alert(1)' is not an http(s) link"),
        ("weekly_digest", {"streamsThisWeek": "lots"}, "'streamsThisWeek': Input should be a valid integer"),
        ("release_status", {"releaseName": "Hit\r\nBcc: x@x.com"}, "subject contains a line break"),
    ],
)  # fmt: skip
def test_bad_contexts_are_permanent_errors_naming_template_and_field(
    name: str, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateRenderError) as error:
        render_template(name, _body(name, **change))
    assert isinstance(error.value, PermanentError)
    assert f"template '{name}'" in str(error.value)
    assert message in str(error.value)
    # The same refusal happens at enqueue, before anything is queued or run.
    message_arg = {"to": ["zoe@example.com"], "template": name, "context": _body(name, **change)}
    with pytest.raises(JobValidationError, match="argument 'message'"):
        REGISTRY.get("send_email").payload({"message": message_arg}, max_bytes=1 << 20)


def test_the_job_schema_documents_each_templates_context() -> None:
    schema = REGISTRY.get("send_email").args_model.model_json_schema()
    email = schema["$defs"]["Email"]
    rules = {rule["if"]["properties"]["template"]["const"]: rule["then"] for rule in email["allOf"]}
    assert set(rules) == set(get_args(TemplateName))
    reset = rules["password_reset"]["properties"]["context"]
    assert set(reset["properties"]) == {"firstName", "resetLink", "expiresIn"}
    assert reset["required"] == ["firstName", "resetLink"]
    release = rules["release_status"]["properties"]["context"]
    assert release["properties"]["status"]["enum"][:4] == ["submitted", "processing", "in_review", "live"]
    assert "failed" in release["properties"]["status"]["enum"]
