"""The arguments of the email jobs, validated when the job is enqueued.

Everything a caller can get wrong is refused here, so `Producer.enqueue_job` raises
`JobValidationError` before anything is queued or run: bad addresses, line breaks (raw or
RFC 2047-encoded) in any header value, oversized subjects and bodies, a message with no body,
an unknown template or a template context that does not render. The worker validates the
same model again when it loads the job, so a payload written to Redis by hand gets no further.
"""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from jobs.email.addresses import Mailbox
from jobs.email.contexts import TEMPLATE_CONTEXTS
from jobs.email.headers import header_problem
from jobs.email.templates import (
    DEFAULT_APP_URL,
    TEMPLATE_NAMES,
    Rendered,
    TemplateName,
    TemplateRenderError,
    render_template,
)
from settings import Settings

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_BULK_RECIPIENTS",
    "MAX_RECIPIENTS",
    "MAX_SUBJECT_CHARS",
    "BulkEmail",
    "Category",
    "Email",
    "EmailContent",
    "IdempotencyKey",
    "sender_problem",
]

MAX_SUBJECT_CHARS = 255
# Gmail clips messages over ~102 KB; a body this size is a bug, not an email.
MAX_BODY_BYTES = 128 * 1024
MAX_RECIPIENTS = 50
MAX_BULK_RECIPIENTS = 5000
MAX_CATEGORIES = 10

_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,99}")


def sender_problem(address: str, settings: Settings) -> str | None:
    """Why `address` may not send (EMAIL_ALLOWED_FROM, by default EMAIL_FROM's domain), or None."""
    allowed = settings.email_senders_allowed
    lowered = address.lower()
    if lowered in allowed or lowered.rpartition("@")[2] in allowed:
        return None
    return (
        f"from_address {address!r} is not an allowed sender; allowed: {', '.join(allowed)} "
        "(EMAIL_ALLOWED_FROM, by default the domain of EMAIL_FROM)"
    )


def _header_safe(value: str) -> str:
    problem = header_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _subject(value: str) -> str:
    _header_safe(value)
    value = value.strip()
    if not value:
        raise ValueError("is empty")
    if len(value) > MAX_SUBJECT_CHARS:
        raise ValueError(f"is {len(value)} characters, over the {MAX_SUBJECT_CHARS}-character limit")
    return value


def _body_size(value: str) -> str:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise ValueError(f"is {size} bytes, over the {MAX_BODY_BYTES}-byte limit")
    return value


def _category(value: str) -> str:
    _header_safe(value)
    if not _CATEGORY.fullmatch(value):
        raise ValueError(f"{value[:40]!r} is not a category; use 1-100 letters, digits, spaces and _ . : / -")
    return value


def _key(value: str) -> str:
    problem = header_problem(value)
    if problem is not None or not value.strip():
        raise ValueError(problem or "is blank")
    return value


Subject = Annotated[str, AfterValidator(_subject)]
Body = Annotated[str, AfterValidator(_body_size)]
Category = Annotated[str, AfterValidator(_category)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_key)]


def _unique(mailboxes: list[Mailbox], field: str) -> None:
    seen: dict[str, int] = {}
    for index, mailbox in enumerate(mailboxes):
        address = mailbox.email.lower()
        if address in seen:
            raise ValueError(f"{field}: {mailbox.email} appears twice (entries {seen[address]} and {index})")
        seen[address] = index


class EmailContent(BaseModel):
    """What a message says: subject and bodies, or a template and its context."""

    model_config = ConfigDict(extra="forbid", strict=True)

    subject: Subject | None = None
    text: Body | None = None
    html: Body | None = None
    template: TemplateName | None = None
    context: dict[str, JsonValue] = Field(default_factory=dict)
    from_address: Mailbox | None = None
    reply_to: Mailbox | None = None
    categories: Annotated[list[Category], Field(max_length=MAX_CATEGORIES)] = Field(default_factory=list)

    _rendered: Rendered | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _has_content(self) -> Self:
        if self.template is None:
            if self.context:
                raise ValueError("'context' is only used with a 'template'")
            if self.text is None and self.html is None:
                raise ValueError("no body: give 'text' and/or 'html', or a 'template'")
            if self.subject is None:
                raise ValueError("'subject' is required unless a 'template' gives it")
            return self
        if self.text is not None or self.html is not None:
            raise ValueError("give either a 'template' or 'text'/'html' bodies, not both")
        # Render now: a context the template cannot use is refused before anything is queued.
        try:
            rendered = render_template(self.template, self.context)  # links under the default APP_URL
        except TemplateRenderError as exc:
            raise ValueError(str(exc)) from None
        for part, body in (("text", rendered.text), ("html", rendered.html)):
            if body is not None and len(body.encode()) > MAX_BODY_BYTES:
                raise ValueError(
                    f"template {self.template!r}: the rendered {part} is over {MAX_BODY_BYTES} bytes"
                )
        self._rendered = rendered
        return self

    @model_validator(mode="after")
    def _sender_allowed(self, info: ValidationInfo) -> Self:
        settings = (info.context or {}).get("settings")
        if self.from_address is not None and isinstance(settings, Settings):
            problem = sender_problem(self.from_address.email, settings)
            if problem is not None:
                raise ValueError(problem)
        return self

    def rendered(self, app_url: str = DEFAULT_APP_URL) -> Rendered:
        """Subject and bodies as sent; a subject given with a template overrides the template's.
        Links the context does not give point under `app_url` (the APP_URL setting)."""
        if self.template is not None:
            template = self._rendered
            if template is None or app_url != DEFAULT_APP_URL:
                template = render_template(self.template, self.context, app_url=app_url)
            subject = self.subject or template.subject
            return Rendered(subject=subject, text=template.text, html=template.html)
        return Rendered(subject=self.subject or "", text=self.text, html=self.html)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema says, per `template`, what its `context` takes (the context models)."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        rules: list[JsonSchemaValue] = []
        for name in TEMPLATE_NAMES:
            context = handler(TEMPLATE_CONTEXTS[name].__pydantic_core_schema__)
            rules.append(
                {
                    "if": {"properties": {"template": {"const": name}}, "required": ["template"]},
                    "then": {"properties": {"context": context}},
                }
            )
        target["allOf"] = rules
        return schema


class Email(EmailContent):
    """One transactional message; every address in `to` sees the others."""

    to: Annotated[list[Mailbox], Field(min_length=1, max_length=MAX_RECIPIENTS)]

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        _unique(self.to, "to")
        return self


class BulkEmail(EmailContent):
    """The same message to many people, each receiving their own copy."""

    recipients: Annotated[list[Mailbox], Field(min_length=1, max_length=MAX_BULK_RECIPIENTS)]

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        _unique(self.recipients, "recipients")
        return self
