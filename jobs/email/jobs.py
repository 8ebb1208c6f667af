"""The email jobs: thin wrappers that build the message and hand it to `delivery`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.context import JobContext
from core.deps import POSTGRES
from core.errors import PermanentError
from core.flow import RateCost
from jobs.email.addresses import Mailbox, parse_mailbox
from jobs.email.delivery import deliver, deliver_bulk
from jobs.email.messages import BulkEmail, Email, EmailContent, IdempotencyKey, sender_problem
from jobs.email.mime import Outgoing, make_message_id
from jobs.email.store import SENT_MEMO, Claimant, DeliveryStore
from jobs.email.transports import EMAIL_TRANSPORT
from settings import Settings

__all__ = [
    "BULK_EMAIL_COSTS",
    "CRITICAL_TEMPLATES",
    "EMAIL_COSTS",
    "bulk_too_big_inline",
    "email_queue",
    "send_bulk_email",
    "send_email",
]


def _outgoing(ctx: JobContext, content: EmailContent, key: str, to: tuple[Mailbox, ...]) -> Outgoing:
    rendered = content.rendered(ctx.deps.settings.app_url)
    if content.from_address is not None:
        # Checked again here: the worker's settings decide, whoever wrote the job to Redis.
        problem = sender_problem(content.from_address.email, ctx.deps.settings)
        if problem is not None:
            raise PermanentError(problem)
    sender = content.from_address or parse_mailbox(ctx.deps.settings.email_from)
    return Outgoing(
        sender=sender,
        to=to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        reply_to=content.reply_to,
        categories=tuple(content.categories),
        idempotency_key=key,
        message_id=make_message_id(key, sender),
    )


async def _store(ctx: JobContext) -> DeliveryStore:
    pool = await ctx.deps.get(POSTGRES)  # first, so it is closed after the memo that flushes into it
    memo = await ctx.deps.get(SENT_MEMO)
    return DeliveryStore(pool, memo, lease_s=ctx.deps.settings.email_claim_lease)


def _claimant(ctx: JobContext) -> Claimant:
    # Every start counts here, interrupted ones too: a later start takes the claim over at once.
    return Claimant(job_id=ctx.job_id, mode=ctx.mode, job_try=ctx.start_number)


async def send_email(
    ctx: JobContext, *, message: Email, idempotency_key: IdempotencyKey | None = None
) -> dict[str, Any]:
    """Send one transactional email once per idempotency key (default: the job id)."""
    outgoing = _outgoing(ctx, message, idempotency_key or ctx.job_id, tuple(message.to))
    store = await _store(ctx)
    transport = await ctx.deps.get(EMAIL_TRANSPORT)
    return await deliver(store, transport, outgoing, _claimant(ctx), ctx.log)


async def send_bulk_email(
    ctx: JobContext, *, message: BulkEmail, idempotency_key: IdempotencyKey | None = None
) -> dict[str, Any]:
    """Send one copy of an email to each recipient, once each; per-recipient outcomes returned."""
    base = _outgoing(ctx, message, idempotency_key or ctx.job_id, ())
    store = await _store(ctx)
    transport = await ctx.deps.get(EMAIL_TRANSPORT)
    return await deliver_bulk(
        store,
        transport,
        base,
        message.recipients,
        _claimant(ctx),
        final_try=ctx.job_try >= ctx.max_tries,
        log=ctx.log,
        progress=ctx.progress,
        cancelled=lambda: ctx.cancel_requested,
    )


def bulk_too_big_inline(settings: Settings, kwargs: Mapping[str, Any]) -> str | None:
    """A bulk send over EMAIL_INLINE_MAX_RECIPIENTS waits for a worker rather than running in a
    web request while Redis is down (5,000 recipients take minutes)."""
    message = kwargs.get("message")
    recipients = message.get("recipients") if isinstance(message, Mapping) else None
    count = len(recipients) if isinstance(recipients, list) else 0
    limit = settings.email_inline_max_recipients
    if count > limit:
        return f"{count} recipients, over EMAIL_INLINE_MAX_RECIPIENTS={limit}"
    return None


# Mail the user waits for, or that concerns their money: ahead of everything else.
CRITICAL_TEMPLATES = frozenset(
    {"password_reset", "email_verification", "payment_receipt", "payment_failed", "subscription_confirmation"}
)
# The rate limit mail spends from (RATE_LIMITS=email=14/s): one unit per message sent.
EMAIL_LIMIT = "email"


def email_queue(kwargs: Mapping[str, Any]) -> str:
    """`critical` for password resets, verification and payment mail; `default` otherwise."""
    message = kwargs.get("message")
    template = message.get("template") if isinstance(message, Mapping) else None
    return "critical" if template in CRITICAL_TEMPLATES else "default"


def recipient_count(kwargs: Mapping[str, Any]) -> int:
    """How many messages a bulk send sends (its cost under the `email` limit)."""
    message = kwargs.get("message")
    recipients = message.get("recipients") if isinstance(message, Mapping) else None
    return len(recipients) if isinstance(recipients, list) else 1


EMAIL_COSTS = (RateCost(EMAIL_LIMIT, 1),)
BULK_EMAIL_COSTS = (RateCost(EMAIL_LIMIT, recipient_count),)
