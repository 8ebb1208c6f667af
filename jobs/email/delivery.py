"""Claim, send, record: the steps that make an email job safe to run twice.

`deliver` sends one message under one idempotency key; `deliver_bulk` sends one copy per
recipient, each under `<key>/<address>`, in batches the transport takes at once. A key that
another run already delivered is not sent again: its recorded outcome is returned. A key a
live run holds makes a queued run retry later (TransientError with the lease as Retry-After);
an inline run answers at once that the message is being sent elsewhere (a caller in a web
request must not wait out another process's lease).

A message accepted by the provider is recorded as sent before anything else is awaited (for a
bulk send, each copy as soon as it is accepted): the only window in which a killed run can
lead to a second copy is the one between the provider's acceptance and that write, and the
"email sent" line reports how long it was (`unrecorded_ms`).

Provider outcomes: a permanent refusal marks the key failed and fails the job; a transient
one frees the key and lets the runner retry with backoff. A transient failure in the middle
of a transfer (a timeout after the message data went out) is ambiguous: the provider may
have queued it. We retry, so such a message may arrive twice (same Message-ID) rather than
never. See `jobs.email.store` for what happens when a send cannot be recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from core.errors import JobCancelled, PermanentError, TransientError, classify
from jobs.email.addresses import Mailbox
from jobs.email.mime import Outgoing
from jobs.email.store import Claim, Claimant, Delivery, DeliveryStore
from jobs.email.transports.base import Failed, Sent, Transport

__all__ = ["deliver", "deliver_bulk"]

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _held_elsewhere(key: str, earlier: Delivery) -> TransientError:
    return TransientError(
        f"email {key!r} is being sent by job {earlier.job_id} ({earlier.job_mode}); "
        "checking again when its claim ends",
        retry_after=max(1.0, earlier.lease_left_s),
    )


def _elsewhere(earlier: Delivery) -> dict[str, Any]:
    return {
        "status": "in_progress_elsewhere",
        "idempotency_key": earlier.key,
        "job_id": earlier.job_id or None,
        "mode": earlier.job_mode or None,
        "retry_in_s": round(earlier.lease_left_s, 1),
    }


def _earlier_outcome(earlier: Delivery) -> dict[str, Any]:
    return {
        "status": "already_sent",
        "idempotency_key": earlier.key,
        "transport": earlier.transport,
        "message_id": earlier.provider_message_id,
        "sent_at": earlier.sent_at.isoformat() if earlier.sent_at else None,
        "sent_by_job": earlier.job_id or None,
    }


async def deliver(
    store: DeliveryStore,
    transport: Transport,
    message: Outgoing,
    claimant: Claimant,
    log: structlog.typing.FilteringBoundLogger,
) -> dict[str, Any]:
    key = message.idempotency_key
    claim = await store.claim([key], claimant, transport.name)
    if key not in claim.claimed:
        earlier = claim.others[key]
        if earlier.state == "failed":
            raise PermanentError(earlier.error or f"email {key!r} was refused earlier")
        if earlier.state != "sent":
            if claimant.mode == "inline":
                log.info("email is being sent by another run", idempotency_key=key, by_job=earlier.job_id)
                return _elsewhere(earlier)
            raise _held_elsewhere(key, earlier)
        log.info("email already sent, not sending again", idempotency_key=key, sent_by_job=earlier.job_id)
        return _earlier_outcome(earlier)
    try:
        sent = await transport.send(message)
    except asyncio.CancelledError:
        raise  # the claim stays; a later try of this job takes it over
    except Exception as exc:
        await store.record_failed(claim, {key: str(exc)}, classify(exc))
        raise
    accepted = time.perf_counter()
    recorded = await store.record_sent({key: sent.message_id}, transport.name)
    log.info(
        "email sent",
        idempotency_key=key,
        transport=transport.name,
        message_id=sent.message_id,
        recipients=len(message.to),
        refused=len(sent.refused),
        recorded=recorded,
        unrecorded_ms=round((time.perf_counter() - accepted) * 1000, 2),
    )
    return {
        "status": "sent",
        "idempotency_key": key,
        "transport": transport.name,
        "message_id": sent.message_id,
        "sent_at": datetime.now(UTC).isoformat(),
        "recipients": len(message.to),
        "refused": sent.refused,
        "recorded": recorded,
    }


class _BulkRun:
    """Per-recipient outcomes of one bulk run, in the order the recipients were given."""

    def __init__(self, recipients: Sequence[Mailbox]) -> None:
        self.rows: dict[str, dict[str, Any]] = {
            r.email: {"email": r.email, "status": "pending"} for r in recipients
        }
        self.retry_after: float | None = None

    def set(self, email: str, status: str, **details: Any) -> None:
        self.rows[email] = {"email": email, "status": status, **details}

    def defer(self, email: str, reason: str, retry_after: float | None) -> None:
        self.set(email, "deferred", error=reason)
        if retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, retry_after)

    def first_error(self, status: str) -> str:
        return next((str(r.get("error")) for r in self.rows.values() if r["status"] == status), "")


async def _send_chunk(
    store: DeliveryStore, transport: Transport, copies: Sequence[Outgoing], claim: Claim, run: _BulkRun
) -> bool:
    """Send the claimed copies; record each outcome. True if every one failed transiently."""
    recorded: set[str] = set()

    async def record_at_once(copy: Outgoing, outcome: Sent) -> None:
        if await store.record_sent_now(copy.idempotency_key, outcome.message_id, transport.name):
            recorded.add(copy.idempotency_key)

    try:
        outcomes = await transport.send_batch(copies, record_at_once)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await store.record_failed(claim, {c.idempotency_key: str(exc) for c in copies}, classify(exc))
        raise
    sent: dict[str, str] = {}
    failed: dict[bool, dict[str, str]] = {True: {}, False: {}}
    for copy, outcome in zip(copies, outcomes, strict=True):
        email = copy.to[0].email
        if isinstance(outcome, Sent):
            sent[copy.idempotency_key] = outcome.message_id
            run.set(email, "sent", message_id=outcome.message_id)
        elif isinstance(outcome, Failed):
            failed[outcome.permanent][copy.idempotency_key] = outcome.reason
            if outcome.permanent:
                run.set(email, "failed", error=outcome.reason)
            else:
                run.defer(email, outcome.reason, outcome.retry_after)
    unrecorded = {key: message_id for key, message_id in sent.items() if key not in recorded}
    if unrecorded:  # Postgres missed some at once: retried here (and held in memory meanwhile)
        await store.record_sent(unrecorded, transport.name)
    await store.record_failed(claim, failed[True], "permanent")
    await store.record_failed(claim, failed[False], "transient")
    return not sent and not failed[True]


async def deliver_bulk(
    store: DeliveryStore,
    transport: Transport,
    base: Outgoing,
    recipients: Sequence[Mailbox],
    claimant: Claimant,
    *,
    final_try: bool,
    log: structlog.typing.FilteringBoundLogger,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One copy per recipient. Retries (TransientError) while copies are deferred and tries
    remain; on the last try, reports them as deferred instead. Reports `progress` after each
    batch, and stops between batches when `cancelled()` (JobCancelled: the copies already sent
    stay recorded, so sending the same key again sends only the rest)."""
    bulk_key = base.idempotency_key
    run = _BulkRun(recipients)
    stopped: str | None = None
    done = 0
    for chunk in _chunks(recipients, transport.batch_size):
        if cancelled is not None and cancelled():
            raise JobCancelled(f"cancelled on request after {done} of {len(recipients)} recipients")
        done += len(chunk)
        copies = [base.for_recipient(r, f"{bulk_key}/{r.email}") for r in chunk]
        if stopped is not None:
            for copy in copies:
                run.defer(copy.to[0].email, stopped, None)
            continue
        claim = await store.claim([c.idempotency_key for c in copies], claimant, transport.name)
        todo = []
        for copy in copies:
            earlier = claim.others.get(copy.idempotency_key)
            if earlier is None:
                todo.append(copy)
            elif earlier.state == "sent":
                run.set(copy.to[0].email, "already_sent", message_id=earlier.provider_message_id)
            elif earlier.state == "failed":  # refused for good on an earlier try of this job
                run.set(copy.to[0].email, "failed", error=earlier.error)
            elif claimant.mode == "inline":  # answered at once, as for a single message
                run.set(copy.to[0].email, "in_progress_elsewhere", by_job=earlier.job_id or None)
            else:
                held = _held_elsewhere(copy.idempotency_key, earlier)
                run.defer(copy.to[0].email, str(held), held.retry_after)
        if todo and await _send_chunk(store, transport, todo, claim, run):
            # The provider took none of this batch: later batches would fare no better now.
            stopped = run.first_error("deferred")
        if progress is not None:
            progress(done / len(recipients), f"{done} of {len(recipients)} recipients")
    counts = Counter(row["status"] for row in run.rows.values())
    delivered = counts["sent"] + counts["already_sent"]
    summary = f"{delivered} of {len(recipients)} recipients delivered"
    elsewhere = counts["in_progress_elsewhere"]  # an inline run: another run is sending those
    log.info("bulk email done", idempotency_key=bulk_key, transport=transport.name, **counts)
    if counts["deferred"] and (not final_try or not delivered):
        raise TransientError(
            f"{counts['deferred']} recipients deferred ({run.first_error('deferred')}); {summary}",
            retry_after=run.retry_after,
        )
    if not delivered and not elsewhere:
        raise PermanentError(f"no recipient accepted the message ({run.first_error('failed')}); {summary}")
    statuses = ("sent", "already_sent", "failed", "deferred") + (
        ("in_progress_elsewhere",) if elsewhere else ()
    )
    return {
        "status": "complete" if delivered == len(recipients) else "partial",
        "idempotency_key": bulk_key,
        "transport": transport.name,
        "counts": {status: counts[status] for status in statuses},
        "recipients": list(run.rows.values()),
    }
