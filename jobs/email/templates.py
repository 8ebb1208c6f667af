"""The platform's transactional templates: a subject, a text part and an HTML part each.

Templates live in `jobs/email/templates/` as `NAME.subject.txt`, `NAME.txt` and `NAME.html`.
Each has a context model in `jobs.email.contexts` (the names the platform sends); a context is
validated against it first, so a missing, mistyped or unknown field is refused naming the
template, the field and the names it accepts. HTML is autoescaped, text and subject are not
(they are not HTML). A variable the template uses but the model lacks is an error
(StrictUndefined), never an empty string in someone's inbox.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit

import pydantic

from core.errors import PermanentError
from jobs.email.contexts import KNOWN_PLANS, TEMPLATE_CONTEXTS, TemplateContext
from jobs.email.headers import header_problem

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "DEFAULT_APP_URL",
    "PLANS",
    "TEMPLATE_NAMES",
    "Plan",
    "Rendered",
    "TemplateName",
    "TemplateRenderError",
    "context_problem",
    "render_template",
    "validate_context",
]

TemplateName = Literal[
    "welcome",
    "email_verification",
    "password_reset",
    "subscription_confirmation",
    "payment_receipt",
    "payment_failed",
    "release_status",
    "collaboration_invite",
    "team_invite",
    "general_invite",
    "support_ticket_created",
    "support_ticket_replied",
    "support_ticket_status",
    "weekly_digest",
]
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)
# Links the caller did not give point under this when no APP_URL is at hand (at enqueue).
DEFAULT_APP_URL = "https://maxbooster.ai"


@dataclass(frozen=True, slots=True)
class Plan:
    key: str
    label: str
    price: str
    billing: str


# The price list lives here, not in each caller's context, so a receipt cannot show a typo.
PLANS: dict[str, Plan] = {key: Plan(key, *values) for key, values in KNOWN_PLANS.items()}


class TemplateRenderError(PermanentError):
    """A template could not be rendered with the given context; retrying cannot help."""


class _BadContext(ValueError):
    """A context value a template helper cannot use."""


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadContext(f"expected a number, got {value!r}")
    return f"{value:,}"


def _signed_percent(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadContext(f"expected a percentage, got {value!r}")
    return f"{value:+.0f}%"


def _money(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadContext(f"expected an amount, got {value!r}")
    return f"${value:,.2f}"


def _link(value: object) -> str:
    # Only web links: a `javascript:` or `data:` URL must not become a button.
    text = str(value)
    if urlsplit(text).scheme not in ("http", "https") or any(ch.isspace() for ch in text):
        raise _BadContext(f"{text[:80]!r} is not an http(s) link")
    return text


def _shorten(value: object, limit: int = 500) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A message's subject and bodies; a template always gives both bodies, a caller may give one."""

    subject: str
    text: str | None
    html: str | None


@functools.cache
def _environment() -> jinja2.Environment:
    """The template environment, built at the first render: Jinja2 is imported here, not with
    the email family, so a process that renders no mail (the CLI, a producer, a worker of other
    queues) never loads it (issue 18)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobs.email", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=_number, signed_percent=_signed_percent, link=_link, money=_money, shorten=_shorten
    )
    return env


def _field_names(model: type[pydantic.BaseModel]) -> str:
    return ", ".join(info.alias or name for name, info in model.model_fields.items())


def context_problem(name: str, exc: pydantic.ValidationError, model: type[pydantic.BaseModel]) -> str:
    """A validation error of template `name`'s context, as one readable line."""
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "(context)"
        if err["type"] == "missing":
            problems.append(f"{field!r} is required")
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown field {field!r} (it takes {_field_names(model)})")
        else:
            shown = repr(err.get("input"))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{field!r}: {message} (got {shown})" if field != "(context)" else message)
    return f"template {name!r}: context " + "; ".join(problems)


def validate_context(name: str, context: Mapping[str, Any]) -> TemplateContext:
    """The context as the template's model; raises `TemplateRenderError` naming the problem."""
    model = TEMPLATE_CONTEXTS.get(name)
    if model is None or name not in TEMPLATE_NAMES:
        raise TemplateRenderError(f"unknown template {name!r}; available: {', '.join(TEMPLATE_NAMES)}")
    try:
        return model.model_validate(dict(context))
    except pydantic.ValidationError as exc:
        raise TemplateRenderError(context_problem(name, exc, model)) from None


def render_template(name: str, context: Mapping[str, Any], *, app_url: str = DEFAULT_APP_URL) -> Rendered:
    """Render all three parts; raises `TemplateRenderError` naming the template and the problem.

    `app_url` is where links the context does not give point (APP_URL, from the settings)."""
    variables = {**validate_context(name, context).variables(), "app_url": app_url.rstrip("/")}
    env = _environment()
    import jinja2  # for its exception types; `_environment()` has loaded it

    parts: dict[str, str] = {}
    for part, filename in (
        ("subject", f"{name}.subject.txt"),
        ("text", f"{name}.txt"),
        ("html", f"{name}.html"),
    ):
        try:
            parts[part] = env.get_template(filename).render(variables)
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
