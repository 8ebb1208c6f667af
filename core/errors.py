"""The error taxonomy shared by the runner and the jobs.

Jobs raise `TransientError` for what may work on a later try (timeouts, connection errors,
HTTP 429/5xx) and `PermanentError` for what never will (bad input, HTTP 4xx). `classify`
maps any other exception onto one of the two, so queued and inline runs retry alike.

The queue backend raises one hierarchy of its own, `BackendError`: `BackendUnavailable` in its
two cases (`NotSent`: certainly not applied; `ReplyLost`: the outcome is unknown) and
`BackendRefused` (authentication, ACL, wrong type, out of memory, script errors). It lives here
so that job families (the analytics plug-in) can tell an outage from a refusal without
importing the backend.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal

import asyncpg

__all__ = [
    "BackendError",
    "BackendRefused",
    "BackendUnavailable",
    "CredentialsRefused",
    "EnqueueError",
    "ErrorKind",
    "JobCancelled",
    "JobFailed",
    "JobModuleError",
    "JobTimeout",
    "JobValidationError",
    "NotSent",
    "PermanentError",
    "ReplyLost",
    "TransientError",
    "UnknownJobError",
    "classify",
    "scrub",
]

ErrorKind = Literal["transient", "permanent"]


class PermanentError(Exception):
    """A failure that will not go away by retrying: fail the job at once."""


class TransientError(Exception):
    """A failure that may go away: retry with backoff, or after `retry_after` seconds if given."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelled(Exception):
    """Raised by a job (`ctx.raise_if_cancelled()`) that stops on a cancel request; the job ends
    `cancelled`: no retry, no dead letter."""


class JobTimeout(TransientError):
    """The job ran longer than its timeout."""


class JobValidationError(ValueError):
    """Raised at enqueue time, before anything is queued or run."""


class UnknownJobError(JobValidationError):
    """The job name is not in the registry."""


class JobModuleError(ValueError):
    """An extra job module (JOB_MODULES, `--jobs`) cannot be imported, defines no jobs, or names
    a job already registered: a configuration error, reported at start."""


class EnqueueError(RuntimeError):
    """The job could be neither queued nor run; the caller must handle it.

    From `enqueue_many`, `queued` holds the handles of the jobs that did reach Redis.
    """

    def __init__(self, message: str, *, queued: list[Any] | None = None) -> None:
        super().__init__(message)
        self.queued = queued or []


class JobFailed(Exception):
    """A job ended in failure; raised by `JobHandle.result()` in both modes alike."""

    def __init__(self, job_id: str, error_type: str, message: str, kind: str = "permanent") -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.kind = kind

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.error_type, "message": self.message, "kind": self.kind}


class BackendError(Exception):
    """The queue backend could not do what was asked; see the two subclasses."""


class BackendUnavailable(BackendError):
    """The backend is unreachable or timed out (the breaker is open afterwards)."""


class NotSent(BackendUnavailable):
    """The command certainly did not reach the backend: nothing was applied."""


class ReplyLost(BackendUnavailable):
    """The command may have reached the backend but no reply came back: the outcome is unknown.

    `replies` holds the replies that did arrive, in order, for a pipelined batch.
    """

    def __init__(self, message: str, replies: list[Any] | None = None) -> None:
        super().__init__(message)
        self.replies = replies or []


class BackendRefused(BackendError):
    """The backend answered with a refusal: bad credentials, an ACL, a key of the wrong type,
    out of memory, a script error. Retrying at once will not help; it is a configuration or
    data problem, not an outage."""


class CredentialsRefused(BackendRefused):
    """The backend refused this client: a wrong password or user, or an ACL that does not grant
    a command the runner needs. A configuration error: the message says what to fix."""


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    BackendUnavailable,
)


# A password in a URL (`scheme://user:password@host`), whoever's it is.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `***` (providers echo keys back in error messages),
    and any password in a URL too, configured or not."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    return text


def _http_error(exc: BaseException) -> tuple[bool, int | None]:
    """(a transport error?, the HTTP status) of an httpx exception. httpx is looked up, not
    imported: only the AI family uses it, and it imports it when its client is first built (a
    process that never did cannot be holding one of its exceptions)."""
    httpx = sys.modules.get("httpx")
    if httpx is None:
        return False, None
    if isinstance(exc, httpx.HTTPStatusError):
        return False, int(exc.response.status_code)
    return isinstance(exc, httpx.TransportError), None


def _http_status(exc: BaseException) -> int | None:
    status = _http_error(exc)[1]
    if status is None:
        status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def classify(exc: BaseException) -> ErrorKind:
    """Transient errors are retried; everything else fails at once.

    An unknown exception is a bug or bad data, which retrying cannot fix, so it is permanent.
    """
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, (TransientError, *_TRANSIENT_TYPES)) or _http_error(exc)[0]:
        return "transient"
    status = _http_status(exc)
    if status is not None and (status == 429 or status >= 500):
        return "transient"
    return "permanent"
