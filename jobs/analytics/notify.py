"""Analytics email, handed to the email family's `send_email` job through the ENQUEUE seam.

Only this module knows the shape of `send_email`'s arguments. Each message carries an
idempotency key equal to its job id, so neither a re-run here nor a retry there sends twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.enqueue import Enqueue, EnqueueOutcome
from core.errors import JobValidationError, UnknownJobError

__all__ = ["SEND_EMAIL", "Contact", "send_email"]

SEND_EMAIL = "send_email"  # the registered name of the email family's job


@dataclass(frozen=True, slots=True)
class Contact:
    artist_id: str
    email: str
    name: str | None = None


def _email_kwargs(contact: Contact, subject: str, text: str, key: str) -> dict[str, Any]:
    mailbox: dict[str, Any] = {"email": contact.email}
    if contact.name:
        mailbox["name"] = contact.name
    return {
        "message": {"to": [mailbox], "subject": subject, "text": text, "categories": ["analytics"]},
        "idempotency_key": key,
    }


async def send_email(
    enqueue: Enqueue, contact: Contact, *, subject: str, text: str, job_id: str
) -> EnqueueOutcome | None:
    """Queue one email; None when its arguments were refused (a bad address, say).

    An unregistered `send_email` is a deployment error and is raised, failing the job.
    """
    try:
        return await enqueue(SEND_EMAIL, _email_kwargs(contact, subject, text, job_id), job_id=job_id)
    except UnknownJobError:
        raise
    except JobValidationError:
        return None
