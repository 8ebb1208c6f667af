"""The platform's templates: every one renders, HTML is escaped, text is not, errors name the cause."""

from __future__ import annotations

from importlib import resources
from typing import Any, get_args

import pytest

from core.errors import PermanentError
from jobs.email.templates import PLANS, TemplateName, TemplateRenderError, render_template

ARTIST = "Zoë <b>Müller</b> & “The Band”"
LINK = "https://app.maxbooster.example/path?a=1&b=2"

CONTEXTS: dict[str, dict[str, Any]] = {
    "welcome": {"name": ARTIST, "dashboard_url": LINK},
    "email_verification": {"name": ARTIST, "verify_url": LINK, "expires_hours": 24},
    "password_reset": {"name": ARTIST, "reset_url": LINK, "expires_minutes": 30},
    "payment_receipt": {
        "name": ARTIST,
        "plan": "monthly",
        "invoice_number": "MB-2026-0042",
        "paid_on": "26 Nov 2026",
    },
    "payment_failed": {"name": ARTIST, "plan": "yearly", "update_payment_url": LINK},
    "release_status": {
        "name": ARTIST,
        "release_title": "Café del Mar",
        "artist_name": "Zoë",
        "status": "live",
        "release_url": LINK,
    },
    "weekly_digest": {
        "name": ARTIST,
        "week_label": "17 to 23 November",
        "streams": 12345,
        "followers_gained": 87,
        "dashboard_url": LINK,
    },
}


def test_every_template_name_has_its_three_files_as_package_data() -> None:
    folder = resources.files("jobs.email") / "templates"
    for name in get_args(TemplateName):
        for suffix in (".subject.txt", ".txt", ".html"):
            assert (folder / f"{name}{suffix}").is_file(), f"{name}{suffix} is missing"
    assert set(CONTEXTS) == set(get_args(TemplateName))


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_each_template_renders_escaped_html_and_plain_text(name: str) -> None:
    rendered = render_template(name, CONTEXTS[name])
    assert rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.text is not None
    assert rendered.html is not None
    assert f"Hi {ARTIST}," in rendered.text  # text is not HTML: nothing escaped
    assert "Zoë &lt;b&gt;Müller&lt;/b&gt; &amp; “The Band”" in rendered.html
    assert "<b>Müller</b>" not in rendered.html
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert "Max Booster" in rendered.html


@pytest.mark.parametrize(
    ("plan", "price", "billing"),
    [
        ("monthly", "$49", "per month"),
        ("yearly", "$468", "per year"),
        ("lifetime", "$699", "one-time payment"),
    ],
)
def test_receipts_show_the_plan_price(plan: str, price: str, billing: str) -> None:
    context = {**CONTEXTS["payment_receipt"], "plan": plan, "card_last4": "4242"}
    rendered = render_template("payment_receipt", context)
    assert rendered.text is not None
    assert f"Amount:   {price} ({billing})" in rendered.text
    assert "Card:     ending in 4242" in rendered.text
    assert PLANS[plan].price == price


def test_weekly_digest_formats_numbers_and_optional_parts() -> None:
    context = {
        **CONTEXTS["weekly_digest"],
        "streams_change_pct": 12.4,
        "top_track": "Night Drive",
        "highlights": ["Added to 3 playlists", "New fans in Lisbon"],
    }
    rendered = render_template("weekly_digest", context)
    assert rendered.text is not None
    assert "12,345 (+12% on last week)" in rendered.text
    assert "- New fans in Lisbon" in rendered.text
    assert rendered.subject == "Your week on Max Booster: 17 to 23 November"


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("password_reset", {"reset_url": None}, "(password_reset.txt): 'reset_url' is undefined"),
        ("payment_failed", {"plan": "weekly"}, "unknown plan 'weekly'; use one of monthly, yearly, lifetime"),
        ("release_status", {"status": "viral"}, "unknown release status 'viral'"),
        ("welcome", {"dashboard_url": "javascript:alert(1)"}, "'javascript:alert(1)' is not an http(s) link"),
        ("weekly_digest", {"streams": "lots"}, "expected a number, got 'lots'"),
        ("release_status", {"release_title": "Hit\r\nBcc: x@x.com"}, "subject contains a line break"),
    ],
)  # fmt: skip
def test_render_errors_are_permanent_and_name_template_and_cause(
    name: str, change: dict[str, Any], message: str
) -> None:
    context = {k: v for k, v in {**CONTEXTS[name], **change}.items() if v is not None}
    with pytest.raises(TemplateRenderError) as error:
        render_template(name, context)
    assert isinstance(error.value, PermanentError)
    assert f"template '{name}'" in str(error.value)
    assert message in str(error.value)
