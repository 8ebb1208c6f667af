"""The delivery ledger in Postgres (table `email_deliveries`) that makes email jobs send once.

Before delivering, a run claims the message's idempotency key. A key is free if it is new,
if its last run failed (unless the provider refused it for good and this is the same job
retrying, say the rest of a bulk send), or if its claim is stale: the lease expired (a crashed worker), or
the claim belongs to an earlier try of the same job in the same mode (that try is over: the
worker and the inline executor start a try only after the previous one ended). A key that is `sent`
is never claimed again: the re-run returns the recorded outcome instead.

Sent but not recorded: once the provider has accepted a message, nothing may turn into a
retry, since a retry would send it again. The send is first noted in a per-process memo
(`SENT_MEMO`), then written to Postgres with a few quick retries. If Postgres stays
unreachable, the job still succeeds (its result says `recorded: false`) and logs an error
with the key and provider message id; the memo keeps this process from sending the key again
and is written to Postgres on the next claim or when the process shuts down. What remains is
a narrow window: another process re-running the same key after the lease expired and before
the record lands would send a second copy. We accept that window over losing mail; the
Message-ID derived from the key lets the copy be recognised.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import structlog

from core.deps import Resource
from settings import Settings

__all__ = ["SENT_MEMO", "Claim", "Claimant", "Delivery", "DeliveryStore", "SentMemo"]

log = structlog.get_logger(__name__)

# Pauses between attempts to record a send; bounded so a job never waits long on a dead database.
_RECORD_RETRY_DELAYS = (0.0, 0.1, 0.4, 1.0)
_MEMO_MAX = 10_000

_CLAIM = """
INSERT INTO email_deliveries AS d
    (idempotency_key, state, transport, claim_token, job_id, job_mode, job_try, lease_until)
SELECT k, 'claimed', $2, $3, $4, $5, $6, now() + make_interval(secs => $7)
FROM unnest($1::text[]) AS k
ON CONFLICT (idempotency_key) DO UPDATE SET
    state = 'claimed', transport = EXCLUDED.transport, claim_token = EXCLUDED.claim_token,
    job_id = EXCLUDED.job_id, job_mode = EXCLUDED.job_mode, job_try = EXCLUDED.job_try,
    lease_until = EXCLUDED.lease_until, attempts = d.attempts + 1, updated_at = now()
WHERE (d.state = 'failed' AND NOT (
        d.error_kind = 'permanent' AND d.job_id = EXCLUDED.job_id AND d.job_mode = EXCLUDED.job_mode))
   OR (d.state = 'claimed' AND (
        d.lease_until <= now()
        OR (d.job_id = EXCLUDED.job_id AND d.job_mode = EXCLUDED.job_mode AND d.job_try < EXCLUDED.job_try)))
RETURNING d.idempotency_key
"""

_READ = """
SELECT idempotency_key, state, transport, job_id, job_mode, provider_message_id, sent_at, error,
       GREATEST(0, EXTRACT(EPOCH FROM lease_until - now()))::float8 AS lease_left_s
FROM email_deliveries WHERE idempotency_key = ANY($1::text[])
"""

_MARK_SENT = """
UPDATE email_deliveries AS d SET
    state = 'sent', provider_message_id = v.message_id, sent_at = v.sent_at, lease_until = now(),
    error = NULL, error_kind = NULL, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS v(idempotency_key, message_id, sent_at)
WHERE d.idempotency_key = v.idempotency_key AND d.state <> 'sent'
"""

# Only our own live claim: a run that was overtaken must not overwrite its successor's state.
_MARK_FAILED = """
UPDATE email_deliveries AS d SET
    state = 'failed', error = v.error, error_kind = $3, lease_until = now(), updated_at = now()
FROM unnest($1::text[], $4::text[]) AS v(idempotency_key, error)
WHERE d.idempotency_key = v.idempotency_key AND d.claim_token = $2 AND d.state = 'claimed'
"""


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who is claiming: one try of one job, in one mode."""

    job_id: str
    mode: str
    job_try: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """A key's row, as another run left it."""

    key: str
    state: Literal["claimed", "sent", "failed"]
    transport: str
    job_id: str
    job_mode: str
    provider_message_id: str | None
    sent_at: datetime | None
    lease_left_s: float
    error: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    token: uuid.UUID
    claimed: frozenset[str]
    # Keys we did not get: delivered already, or held by a live claim of another run.
    others: Mapping[str, Delivery]


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    message_id: str
    transport: str
    sent_at: datetime


class SentMemo:
    """Sends this process made that Postgres has not recorded yet (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Unrecorded] = {}
        self._pool: asyncpg.Pool | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def bind(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def note(self, key: str, message_id: str, transport: str, sent_at: datetime) -> None:
        if len(self._entries) >= _MEMO_MAX:
            oldest = next(iter(self._entries))
            log.error("email sent-memo full, forgetting the oldest unrecorded send", idempotency_key=oldest)
            del self._entries[oldest]
        self._entries[key] = _Unrecorded(message_id, transport, sent_at)

    def forget(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def get(self, key: str) -> _Unrecorded | None:
        return self._entries.get(key)

    async def flush(self) -> None:
        """Write what is pending to Postgres; what fails stays pending."""
        if not self._entries or self._pool is None:
            return
        pending = dict(self._entries)
        try:
            await _write_sent(self._pool, pending)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return
        self.forget(list(pending))
        log.info("recorded earlier email sends", count=len(pending))

    async def aclose(self) -> None:
        await self.flush()
        if self._entries:
            log.error(
                "email sent but never recorded; a re-run with these keys would send again",
                unrecorded={key: entry.message_id for key, entry in self._entries.items()},
            )


async def _write_sent(pool: asyncpg.Pool, sends: Mapping[str, _Unrecorded]) -> None:
    keys = list(sends)
    await pool.execute(
        _MARK_SENT, keys, [sends[k].message_id for k in keys], [sends[k].sent_at for k in keys], timeout=5
    )


async def _create_memo(settings: Settings) -> SentMemo:
    return SentMemo()


async def _close_memo(memo: SentMemo) -> None:
    await memo.aclose()


SENT_MEMO: Resource[SentMemo] = Resource("email_sent_memo", _create_memo, _close_memo)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        key=row["idempotency_key"],
        state=row["state"],
        transport=row["transport"],
        job_id=row["job_id"],
        job_mode=row["job_mode"],
        provider_message_id=row["provider_message_id"],
        sent_at=row["sent_at"],
        lease_left_s=row["lease_left_s"],
        error=row["error"],
    )


class DeliveryStore:
    """Claims and outcomes of email deliveries, for one job run."""

    def __init__(self, pool: asyncpg.Pool, memo: SentMemo, *, lease_s: float) -> None:
        self._pool = pool
        self._memo = memo
        self._lease_s = lease_s
        memo.bind(pool)

    async def claim(self, keys: Sequence[str], claimant: Claimant, transport: str) -> Claim:
        """Claim what is free among `keys`; raises asyncpg's errors (transient) if Postgres is down."""
        await self._memo.flush()
        others: dict[str, Delivery] = {}
        wanted: list[str] = []
        for key in keys:
            unrecorded = self._memo.get(key)
            if unrecorded is None:
                wanted.append(key)
                continue
            others[key] = Delivery(
                key,
                "sent",
                unrecorded.transport,
                "",
                "",
                unrecorded.message_id,
                unrecorded.sent_at,
                0.0,
                None,
            )
        token = uuid.uuid4()
        claimed: set[str] = set()
        if wanted:
            rows = await self._pool.fetch(
                _CLAIM,
                wanted,
                transport,
                token,
                claimant.job_id,
                claimant.mode,
                claimant.job_try,
                self._lease_s,
                timeout=10,
            )
            claimed = {row["idempotency_key"] for row in rows}
        missing = [key for key in wanted if key not in claimed]
        if missing:
            for row in await self._pool.fetch(_READ, missing, timeout=10):
                others[row["idempotency_key"]] = _delivery(row)
        return Claim(token, frozenset(claimed), others)

    async def record_sent(self, sends: Mapping[str, str], transport: str) -> bool:
        """Record delivered keys (key -> provider message id); never raises, see the module doc."""
        now = datetime.now(UTC)
        for key, message_id in sends.items():
            self._memo.note(key, message_id, transport, now)
        pending = {key: _Unrecorded(message_id, transport, now) for key, message_id in sends.items()}
        last_error: BaseException | None = None
        for delay in _RECORD_RETRY_DELAYS:
            if delay:  # the first write goes out at once: nothing is awaited before it
                await asyncio.sleep(delay)
            try:
                await _write_sent(self._pool, pending)
            # Deliberately broad: after the provider took the message, no failure may become a retry.
            except Exception as exc:
                last_error = exc
                continue
            self._memo.forget(list(sends))
            return True
        log.error(
            "email sent but not recorded",
            keys=list(sends)[:20],
            count=len(sends),
            error_type=type(last_error).__name__,
            error=str(last_error),
        )
        return False

    async def record_sent_now(self, key: str, message_id: str, transport: str) -> bool:
        """Record one accepted copy of a bulk send at once, with one try: if Postgres does not
        take it, the memo keeps it and it is written with the next claim (or at the run's end)."""
        now = datetime.now(UTC)
        self._memo.note(key, message_id, transport, now)
        try:
            await _write_sent(self._pool, {key: _Unrecorded(message_id, transport, now)})
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        self._memo.forget([key])
        return True

    async def record_failed(
        self, claim: Claim, errors: Mapping[str, str], kind: Literal["transient", "permanent"]
    ) -> None:
        """Free our claims on keys that were not delivered; best effort (a lease frees them anyway)."""
        if not errors:
            return
        keys = list(errors)
        try:
            await self._pool.execute(
                _MARK_FAILED, keys, claim.token, kind, [errors[k][:2000] for k in keys], timeout=5
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("could not record email failure", count=len(keys), error=str(exc))
