"""Who may use the dashboard: login with a token, a signed session cookie, CSRF tokens, roles.

- Tokens come from `DASHBOARD_TOKENS` (`TOKEN[:operator|viewer[:NAME]]`), or else from
  `API_TOKENS`, where a token limited to some jobs logs in as a viewer. With neither (only with
  `API_DEV_NO_AUTH` on a loopback address) everyone is an operator, for development.
- A login gives a session cookie: HttpOnly, SameSite=Strict, Path=/ui, Secure over https,
  HMAC-SHA256-signed with `DASHBOARD_SESSION_SECRET` (or a random per-process key). It carries
  the role, an expiry, a CSRF token and a fingerprint of the token used, so a token removed from
  the configuration ends its sessions at the next request. The token itself is never stored.
- Every form that acts carries the session's CSRF token, compared in constant time; requests
  from another origin are refused whatever they carry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

import orjson

from settings import Settings, parse_api_tokens, parse_dashboard_tokens

__all__ = ["SESSION_COOKIE", "Access", "LoginThrottle", "Operator", "Session"]

SESSION_COOKIE = "mb_dashboard"


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is logged in: `who` names them in the audit log (a configured name or "token 2")."""

    who: str
    role: str  # "operator" or "viewer"

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True, slots=True)
class Session:
    operator: Operator
    csrf: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Access:
    """The configured tokens and the key that signs sessions and flash messages."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.dashboard_session_secret
        self._key = secret.get_secret_value().encode() if secret is not None else secrets.token_bytes(32)
        self._lifetime_s = settings.dashboard_session_hours * 3600
        # fingerprint of a token -> who logs in with it
        self._tokens: dict[str, Operator] = {}
        if settings.dashboard_tokens is not None:
            entries = parse_dashboard_tokens(settings.dashboard_tokens.get_secret_value())
            for n, (token, role, name) in enumerate(entries, start=1):
                self._tokens[self._fingerprint(token)] = Operator(name or f"dashboard token {n}", role)
            self.source = "DASHBOARD_TOKENS"
        elif settings.api_tokens is not None:
            for n, (token, jobs) in enumerate(parse_api_tokens(settings.api_tokens.get_secret_value()), 1):
                role = "operator" if jobs is None else "viewer"
                self._tokens[self._fingerprint(token)] = Operator(f"API token {n}", role)
            self.source = "API_TOKENS"
        else:
            self.source = "none (API_DEV_NO_AUTH)"

    @property
    def open(self) -> bool:
        """No tokens configured: development on a loopback address, no login."""
        return not self._tokens

    def _fingerprint(self, token: str) -> str:
        return hmac.new(self._key, b"token:" + token.encode(), hashlib.sha256).hexdigest()[:32]

    def _sign(self, purpose: bytes, payload: bytes) -> str:
        return _b64(hmac.new(self._key, purpose + payload, hashlib.sha256).digest())

    # -- login and sessions --------------------------------------------------------------------

    def login(self, token: str) -> tuple[Operator, str] | None:
        """The operator a presented token logs in, with its fingerprint; None if not ours."""
        fingerprint = self._fingerprint(token.strip())
        found = None
        for known, operator in self._tokens.items():  # every entry, so timing tells nothing
            if hmac.compare_digest(known, fingerprint):
                found = (operator, known)
        return found

    def issue(self, fingerprint: str) -> str:
        """A new session cookie's value for the token with this fingerprint (or '' when open)."""
        payload = orjson.dumps(
            {"k": fingerprint, "c": secrets.token_urlsafe(24), "e": time.time() + self._lifetime_s}
        )
        return f"{_b64(payload)}.{self._sign(b'session:', payload)}"

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, if it is ours, unexpired, and its token still configured."""
        if cookie is None:
            return None
        payload_b64, _, signature = cookie.partition(".")
        try:
            payload = _unb64(payload_b64)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(b"session:", payload)):
            return None
        data = orjson.loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("e"), float) or data["e"] < time.time():
            return None
        fingerprint, csrf = data.get("k"), data.get("c")
        if not isinstance(fingerprint, str) or not isinstance(csrf, str):
            return None
        if self.open:
            operator = Operator("no auth (API_DEV_NO_AUTH)", "operator")
        else:
            current = self._tokens.get(fingerprint)
            if current is None:  # the token was removed (or rotated out) since the login
                return None
            operator = current
        return Session(operator, csrf, data["e"])

    @property
    def lifetime_s(self) -> float:
        return self._lifetime_s

    # -- CSRF and flash messages -----------------------------------------------------------------

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(session.csrf, presented)

    def seal(self, text: str) -> str:
        """`text` signed, for a short-lived cookie (the message after an action)."""
        payload = text.encode()
        return f"{_b64(payload)}.{self._sign(b'flash:', payload)}"

    def unseal(self, value: str | None) -> str | None:
        if not value:
            return None
        payload_b64, _, signature = value.partition(".")
        try:
            payload = _unb64(payload_b64)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(b"flash:", payload)):
            return None
        return payload.decode(errors="replace")


class LoginThrottle:
    """At most `limit` failed logins a minute per client address, then 429 until it cools down.
    Tokens are long and random; this keeps a guessing script from hammering the process."""

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float | None:
        """Seconds to wait before this client may try again, or None."""
        failures = self._failures.get(client)
        if failures is None:
            return None
        now = time.monotonic()
        while failures and failures[0] < now - self._window_s:
            failures.popleft()
        if len(failures) < self._limit:
            return None
        return failures[0] + self._window_s - now

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # bounded: forget everyone rather than grow forever
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(time.monotonic())
