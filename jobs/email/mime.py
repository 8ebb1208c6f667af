"""A provider-neutral outgoing message and its RFC 5322 form (for SMTP and .eml files).

Headers are encoded here rather than by `email.policy.default`, whose folder drops the space
between two encoded-words in long non-ASCII subjects (the recipient would read
"live 🎉xxx" for "live 🎉 xxx"). `email.header.Header` keeps spaces inside the encoded text.
Bodies are quoted-printable, so the message is 7-bit clean for any SMTP server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr

from jobs.email.addresses import Mailbox

__all__ = ["Outgoing", "make_message_id", "to_mime_bytes"]

_UTF8_QP = Charset("utf-8")
_UTF8_QP.header_encoding = QP
_UTF8_QP.body_encoding = QP
_POLICY = compat32.clone(linesep="\r\n")


def make_message_id(idempotency_key: str, sender: Mailbox) -> str:
    """A Message-ID derived from the key: a re-sent copy carries the same id, so it can be spotted."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{sender.domain}>"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for a transport; text and html may not both be None."""

    sender: Mailbox
    to: tuple[Mailbox, ...]
    subject: str
    text: str | None
    html: str | None
    reply_to: Mailbox | None
    categories: tuple[str, ...]
    idempotency_key: str
    message_id: str

    def for_recipient(self, recipient: Mailbox, idempotency_key: str) -> Outgoing:
        """This message as one recipient's own copy, with its own key and Message-ID."""
        return replace(
            self,
            to=(recipient,),
            idempotency_key=idempotency_key,
            message_id=make_message_id(idempotency_key, self.sender),
        )


def _phrase(text: str) -> str:
    # An ASCII name containing "=?" would be decoded by mail readers; encode it so it shows as typed.
    if text.isascii() and "=?" not in text:
        return text
    return Header(text, _UTF8_QP).encode()


def _address(mailbox: Mailbox) -> str:
    if not mailbox.name:
        return mailbox.email
    if mailbox.name.isascii() and "=?" not in mailbox.name:
        return formataddr((mailbox.name, mailbox.email))
    return f"{_phrase(mailbox.name)} <{mailbox.email}>"


def _subject(text: str) -> str:
    if text.isascii() and "=?" not in text:
        return Header(text, header_name="Subject").encode(linesep="\r\n")
    return Header(text, _UTF8_QP, header_name="Subject").encode(linesep="\r\n")


def _body(message: Outgoing) -> Message:
    parts = [
        MIMEText(body, subtype, _UTF8_QP)  # type: ignore[arg-type]  # a Charset is accepted
        for body, subtype in ((message.text, "plain"), (message.html, "html"))
        if body is not None
    ]
    if not parts:
        raise ValueError("a message needs a text or an html body")
    if len(parts) == 1:
        return parts[0]
    container = MIMEMultipart("alternative")
    for part in parts:
        container.attach(part)
    return container


def to_mime_bytes(message: Outgoing, *, now: datetime | None = None) -> bytes:
    """The message as CRLF-terminated, 7-bit bytes."""
    mime = _body(message)
    mime["From"] = _address(message.sender)
    mime["To"] = ", ".join(_address(m) for m in message.to)
    if message.reply_to is not None:
        mime["Reply-To"] = _address(message.reply_to)
    mime["Subject"] = _subject(message.subject)
    mime["Date"] = format_datetime(now or datetime.now(UTC))
    mime["Message-ID"] = message.message_id
    if message.categories:
        mime["X-Categories"] = ", ".join(message.categories)
    return mime.as_bytes(policy=_POLICY)
