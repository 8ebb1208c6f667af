"""Analytics email, handed to the email family's `send_email` job through the ENQUEUE seam.

Only this module knows the shape of `send_email`'s arguments. Each message carries an
idempotency key equal to its job id, so neither a re-run here nor a retry there sends twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.enqueue import Enqueue, EnqueueOutcome
from core.errors import JobValidationError, UnknownJobError

__all__ = ["SEND_EMAIL", "Contact", "send_email", "send_template_email"]

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


async def send_template_email(
    enqueue: Enqueue,
    contact: Contact,
    *,
    template: str,
    context: dict[str, Any],
    job_id: str,
    categories: tuple[str, ...] = ("analytics",),
) -> tuple[EnqueueOutcome | None, str | None]:
    """Queue one email rendered from one of the email family's templates; (outcome, None), or
    (None, the reason) when its arguments were refused (a bad address, a context the template
    does not accept)."""
    mailbox: dict[str, Any] = {"email": contact.email}
    if contact.name:
        mailbox["name"] = contact.name
    message = {"to": [mailbox], "template": template, "context": context, "categories": list(categories)}
    try:
        return await enqueue(SEND_EMAIL, {"message": message, "idempotency_key": job_id}, job_id=job_id), None
    except UnknownJobError:
        raise
    except JobValidationError as exc:
        return None, str(exc)


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
