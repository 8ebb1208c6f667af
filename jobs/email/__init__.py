"""Transactional email: the `send_email` and `send_bulk_email` jobs, sent once per key.

    await producer.enqueue(send_email, message=Email(
        to=["Zoë <zoe@example.com>"], template="password_reset",
        context={"firstName": "Zoë", "resetLink": "https://...", "expiresIn": "1 hour"},
    ))

Modules: `headers` and `addresses` (what may go into a header), `messages` (the validated job
arguments), `templates`, `mime`, `transports` (sendgrid, smtp, file), `store` (the Postgres
ledger of idempotency keys), `delivery` (claim, send, record) and `jobs`.
"""

from __future__ import annotations

from jobs.email.addresses import Mailbox
from jobs.email.jobs import (
    BULK_EMAIL_COSTS,
    EMAIL_COSTS,
    bulk_too_big_inline,
    email_queue,
    send_bulk_email,
    send_email,
)
from jobs.email.messages import BulkEmail, Email
from jobs.email.templates import PLANS, TemplateName

__all__ = [
    "BULK_EMAIL_COSTS",
    "EMAIL_COSTS",
    "PLANS",
    "BulkEmail",
    "Email",
    "Mailbox",
    "TemplateName",
    "bulk_too_big_inline",
    "email_queue",
    "send_bulk_email",
    "send_email",
]
