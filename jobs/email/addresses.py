"""Mailboxes (an address with an optional display name), validated with `email-validator`.

A mailbox is given as `"artist@example.com"`, `"Zoë <zoe@example.com>"` or
`{"email": ..., "name": ...}`; it is stored as the object form. Addresses must be globally
deliverable ASCII addresses (an internationalized domain becomes punycode); deliverability
is not checked over DNS, since the caller is usually a web request.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from jobs.email.headers import header_problem

__all__ = ["MAX_NAME_CHARS", "Mailbox", "parse_mailbox"]

MAX_NAME_CHARS = 200


# `Name <address>`: only the split is ours; the address itself goes to email-validator.
_NAME_ADDR = re.compile(r"(?P<name>[^<>]*?)\s*<(?P<address>[^<>]*)>")


def _validate(text: str) -> str:
    """The normalized ASCII form of a bare address; raises ValueError."""
    # Imported at the first address checked, not with the email family (~20 ms at start).
    import email_validator

    try:
        checked = email_validator.validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    if checked.ascii_email is None:  # only possible with SMTPUTF8, which we refuse
        raise ValueError("not an ASCII address")
    return checked.ascii_email


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


class Mailbox(BaseModel):
    """One address and the name shown with it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    email: str
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        problem = header_problem(value)
        if problem is not None:
            raise ValueError(problem)
        match = _NAME_ADDR.fullmatch(value.strip())
        if match is None:
            return {"email": value.strip()}
        return {"email": match["address"].strip(), "name": _unquote(match["name"]) or None}

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        problem = header_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return _validate(value.strip())

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = header_problem(value)
        if problem is not None:
            raise ValueError(problem)
        value = value.strip()
        if len(value) > MAX_NAME_CHARS:
            raise ValueError(f"is {len(value)} characters, over the {MAX_NAME_CHARS}-character limit")
        return value or None

    @property
    def domain(self) -> str:
        return self.email.rsplit("@", 1)[1]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@lru_cache(maxsize=64)
def parse_mailbox(text: str) -> Mailbox:
    """A mailbox from its text form (settings such as EMAIL_FROM); raises ValueError."""
    return Mailbox.model_validate(text)
