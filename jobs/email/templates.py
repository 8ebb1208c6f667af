"""The platform's transactional templates: a subject, a text part and an HTML part each.

Templates live in `jobs/email/templates/` as `NAME.subject.txt`, `NAME.txt` and `NAME.html`.
HTML is autoescaped, text and subject are not (they are not HTML). A missing variable is an
error (StrictUndefined), never an empty string in someone's inbox, and the error names the
template and the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import jinja2

from core.errors import PermanentError
from jobs.email.headers import header_problem

__all__ = ["PLANS", "Plan", "Rendered", "TemplateName", "TemplateRenderError", "render_template"]

TemplateName = Literal[
    "welcome",
    "email_verification",
    "password_reset",
    "payment_receipt",
    "payment_failed",
    "release_status",
    "weekly_digest",
]
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)


@dataclass(frozen=True, slots=True)
class Plan:
    key: str
    label: str
    price: str
    billing: str


# The price list lives here, not in each caller's context, so a receipt cannot show a typo.
PLANS: dict[str, Plan] = {
    "monthly": Plan("monthly", "Monthly", "$49", "per month"),
    "yearly": Plan("yearly", "Yearly", "$468", "per year"),
    "lifetime": Plan("lifetime", "Lifetime", "$699", "one-time payment"),
}


class TemplateRenderError(PermanentError):
    """A template could not be rendered with the given context; retrying cannot help."""


_RELEASE_STATUSES = {
    "submitted": "submitted for distribution",
    "in_review": "in review by the stores",
    "live": "live in stores",
    "rejected": "rejected by a store",
    "taken_down": "taken down",
}


class _BadContext(ValueError):
    """A context value a template helper cannot use."""


def _plan_details(key: object) -> Plan:
    plan = PLANS.get(str(key))
    if plan is None:
        raise _BadContext(f"unknown plan {key!r}; use one of {', '.join(PLANS)}")
    return plan


def _release_status_label(status: object) -> str:
    label = _RELEASE_STATUSES.get(str(status))
    if label is None:
        raise _BadContext(f"unknown release status {status!r}; use one of {', '.join(_RELEASE_STATUSES)}")
    return label


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadContext(f"expected a number, got {value!r}")
    return f"{value:,}"


def _signed_percent(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadContext(f"expected a percentage, got {value!r}")
    return f"{value:+.0f}%"


def _link(value: object) -> str:
    # Only web links: a `javascript:` or `data:` URL from a context value must not become a button.
    text = str(value)
    if urlsplit(text).scheme not in ("http", "https") or any(ch.isspace() for ch in text):
        raise _BadContext(f"{text[:80]!r} is not an http(s) link")
    return text


@dataclass(frozen=True, slots=True)
class Rendered:
    """A message's subject and bodies; a template always gives both bodies, a caller may give one."""

    subject: str
    text: str | None
    html: str | None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobs.email", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(plan_details=_plan_details, release_status_label=_release_status_label)
    env.filters.update(number=_number, signed_percent=_signed_percent, link=_link)
    return env


_ENV = _environment()


def render_template(name: str, context: Mapping[str, Any]) -> Rendered:
    """Render all three parts; raises `TemplateRenderError` naming the template and the problem."""
    if name not in TEMPLATE_NAMES:
        raise TemplateRenderError(f"unknown template {name!r}; available: {', '.join(TEMPLATE_NAMES)}")
    parts: dict[str, str] = {}
    for part, filename in (
        ("subject", f"{name}.subject.txt"),
        ("text", f"{name}.txt"),
        ("html", f"{name}.html"),
    ):
        try:
            parts[part] = _ENV.get_template(filename).render(context)
        except jinja2.UndefinedError as exc:
            raise TemplateRenderError(f"template {name!r} ({filename}): {exc.message}") from None
        except (jinja2.TemplateError, _BadContext, ValueError, TypeError, LookupError) as exc:
            # Rendering is pure: any failure is this template meeting this context, not a hiccup.
            raise TemplateRenderError(f"template {name!r} ({filename}): {exc}") from None
    subject = parts["subject"].strip()
    problem = header_problem(subject)
    if problem is not None:
        raise TemplateRenderError(f"template {name!r}: the rendered subject {problem}")
    if not subject:
        raise TemplateRenderError(f"template {name!r}: the rendered subject is empty")
    return Rendered(subject=subject, text=parts["text"], html=parts["html"])
