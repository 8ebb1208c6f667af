"""Bearer-token authentication for the HTTP API.

Tokens come from `API_TOKENS` (several, so a new one can be rolled out before the old one is
removed); `TOKEN:job1,job2` limits a token to those jobs (and `events` to POST /v1/events). A
presented token is hashed and compared with every configured token's hash in constant time, so
neither a match nor a mismatch is told by timing. Tokens are never logged or echoed: a principal
is named by its position in the list ("token 2").
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from core.registry import Registry
from settings import Settings, parse_api_tokens
from worker.ops.http.responses import ApiError

__all__ = ["EVENTS_SCOPE", "Principal", "TokenAuth"]

# The scope that allows POST /v1/events to a token limited to some jobs.
EVENTS_SCOPE = "events"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="maxbooster-jobs"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: `label` for logs ("token 2"), `jobs` it may use (None: every job)."""

    label: str
    jobs: frozenset[str] | None

    def may(self, scope: str) -> bool:
        return self.jobs is None or scope in self.jobs

    def require(self, scope: str) -> None:
        if not self.may(scope):
            what = "post events" if scope == EVENTS_SCOPE else f"use job {scope!r}"
            raise ApiError(403, "forbidden", f"this token may not {what}; its scope is set in API_TOKENS")


_ANONYMOUS = Principal("no auth (API_DEV_NO_AUTH)", None)


class TokenAuth:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        raw = settings.api_tokens.get_secret_value() if settings.api_tokens is not None else ""
        self._entries: list[tuple[bytes, Principal]] = []
        for n, (token, jobs) in enumerate(parse_api_tokens(raw), start=1):
            unknown = sorted(jobs - {EVENTS_SCOPE, *registry.names()}) if jobs else []
            if unknown:
                names = ", ".join(map(repr, unknown))
                raise ValueError(
                    f"API_TOKENS: token {n} names jobs that are not registered ({names}); "
                    f"use names from: {', '.join(registry.names())} (or {EVENTS_SCOPE!r})"
                )
            self._entries.append((hashlib.sha256(token.encode()).digest(), Principal(f"token {n}", jobs)))

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @property
    def count(self) -> int:
        return len(self._entries)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this `Authorization` header; 401 when there is none or
        the token is not one of ours."""
        if not self._entries:
            return _ANONYMOUS
        if authorization is None:
            raise ApiError(
                401, "unauthorized", "send the header Authorization: Bearer <token>", headers=_CHALLENGE
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "use the Bearer scheme: Authorization: Bearer <token>"
            raise ApiError(401, "unauthorized", message, headers=_CHALLENGE)
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for known, principal in self._entries:  # every entry, so the time does not tell which matched
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise ApiError(401, "unauthorized", "the bearer token is not valid", headers=_CHALLENGE)
        return found
