"""SendGrid v3 mail/send through the official `sendgrid` SDK.

The SDK is synchronous (urllib) and has no default timeout, so each call runs in a small
thread pool of our own with an explicit socket timeout, plus an overall deadline on our side.
Its HTTP client logs request headers, the API key among them, at DEBUG: worker/logs.py keeps
that logger at WARNING, and a filter installed here redacts the header anyway, for a process
whose logging someone else configured.

Status codes: 2xx sent; 429 transient, honouring Retry-After; 5xx transient; any other 4xx
(400, 401, 403, 413, ...) permanent, with SendGrid's reason kept in the error message.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import logging
import re
import time
import urllib.error
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

import python_http_client.exceptions
from pydantic import SecretStr

from core.errors import PermanentError, TransientError, scrub
from jobs.email.addresses import Mailbox
from jobs.email.mime import Outgoing
from jobs.email.transports.base import Failed, OnSent, Sent

__all__ = ["MAX_PERSONALIZATIONS", "SendGridTransport", "install_header_redaction", "request_body"]

MAX_PERSONALIZATIONS = 1000  # SendGrid's limit per mail/send request
_REASON_CHARS = 500


class _RedactAuthorization(logging.Filter):
    """Masks the Authorization header (and any bearer token) in python_http_client's records."""

    _HEADER = re.compile(r"(['\"]?authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}]+", re.IGNORECASE)
    _BEARER = re.compile(r"(bearer\s+)[^\s'\",}]+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = self._BEARER.sub(r"\1***", self._HEADER.sub(r"\1***", text))
        if redacted != text:
            record.msg, record.args = redacted, None
        return True


def install_header_redaction() -> None:
    """Attach the redaction filter to the SDK's HTTP logger, once per process."""
    logger = logging.getLogger("python_http_client.client")
    if not any(isinstance(f, _RedactAuthorization) for f in logger.filters):
        logger.addFilter(_RedactAuthorization())


def _address(mailbox: Mailbox) -> dict[str, str]:
    return {"email": mailbox.email, "name": mailbox.name} if mailbox.name else {"email": mailbox.email}


def request_body(messages: Sequence[Outgoing]) -> dict[str, Any]:
    """One mail/send body: shared content, one personalization per message (its recipients)."""
    first = messages[0]
    content = [
        {"type": kind, "value": body}  # SendGrid requires text/plain before text/html
        for kind, body in (("text/plain", first.text), ("text/html", first.html))
        if body is not None
    ]
    body: dict[str, Any] = {
        "personalizations": [
            {
                "to": [_address(m) for m in message.to],
                "custom_args": {"idempotency_key": message.idempotency_key},
            }
            for message in messages
        ],
        "from": _address(first.sender),
        "subject": first.subject,
        "content": content,
    }
    if first.reply_to is not None:
        body["reply_to"] = _address(first.reply_to)
    if first.categories:
        body["categories"] = list(first.categories)
    return body


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    reset = headers.get("X-RateLimit-Reset")  # epoch seconds, SendGrid's own rate-limit header
    if reset and reset.isdigit():
        return max(0.0, int(reset) - time.time())
    return None


def _reason(body: bytes | str | None) -> str:
    """SendGrid's error messages from a JSON error body, or the start of the raw body."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        errors = json.loads(text).get("errors") or []
        messages = [
            f"{e.get('message')}" + (f" (field {e['field']})" if e.get("field") else "")
            for e in errors
            if isinstance(e, dict)
        ]
        text = "; ".join(messages) or text
    except (ValueError, AttributeError):
        pass
    return text[:_REASON_CHARS]


def _http_error(exc: python_http_client.exceptions.HTTPError, key: str) -> TransientError | PermanentError:
    status = int(exc.status_code)
    detail = scrub(_reason(exc.body), [key])  # an error body may quote the key back
    reason = f"SendGrid answered {status} {exc.reason}" + (f": {detail}" if detail else "")
    if status == 429:
        return TransientError(reason, retry_after=_retry_after(exc.headers))
    if status >= 500:
        return TransientError(reason)
    if status in (401, 403):
        return PermanentError(f"{reason}; check SENDGRID_API_KEY and its mail.send permission")
    return PermanentError(reason)


class SendGridTransport:
    """The `Transport` for SENDGRID_API_KEY."""

    name = "sendgrid"
    batch_size = MAX_PERSONALIZATIONS

    def __init__(self, api_key: SecretStr, *, host: str, timeout: float, max_concurrency: int) -> None:
        install_header_redaction()
        self.host = host
        self.timeout = timeout
        self._key = api_key.get_secret_value()
        # The SDK is imported here, when the transport is first built, not with the email family:
        # it pulls in its webhook helpers and their crypto (a few MB and ~30 ms) that a worker
        # not sending through SendGrid, a producer or the CLI never needs (issue 18).
        import sendgrid

        self._client = sendgrid.SendGridAPIClient(api_key=self._key, host=host)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="sendgrid")

    def __repr__(self) -> str:
        return f"SendGridTransport(host={self.host!r}, timeout={self.timeout})"

    def _post_blocking(self, body: dict[str, Any]) -> Any:
        # BaseInterface.send() takes no timeout; the underlying client's post() does.
        return self._client.client.mail.send.post(request_body=body, timeout=self.timeout)

    async def _post(self, body: dict[str, Any]) -> str | None:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._post_blocking, body)
        try:
            # The socket timeout bounds each read; this bounds a server that trickles bytes.
            async with asyncio.timeout(self.timeout * 2 + 1):
                response = await loop.run_in_executor(self._executor, call)
        except python_http_client.exceptions.HTTPError as exc:
            raise _http_error(exc, self._key) from None
        except TimeoutError:
            raise TransientError(
                f"SendGrid did not answer within {self.timeout:g}s (SENDGRID_TIMEOUT)"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise TransientError(f"SendGrid at {self.host} could not be reached: {reason}") from None
        headers = response.headers
        return headers.get("X-Message-Id") if headers is not None else None

    async def send(self, message: Outgoing) -> Sent:
        provider_id = await self._post(request_body([message]))
        return Sent(provider_id or message.message_id)

    async def send_batch(
        self, messages: Sequence[Outgoing], on_sent: OnSent | None = None
    ) -> list[Sent | Failed]:
        """One request for up to 1,000 copies; SendGrid takes or refuses them together."""
        if len(messages) > MAX_PERSONALIZATIONS:
            raise ValueError(f"at most {MAX_PERSONALIZATIONS} personalizations per request")
        try:
            provider_id = await self._post(request_body(messages))
        except (TransientError, PermanentError) as exc:
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            failed = Failed(str(exc), isinstance(exc, PermanentError), retry_after)
            return [failed for _ in messages]
        outcomes = [Sent(provider_id or m.message_id) for m in messages]
        if on_sent is not None:
            for message, sent in zip(messages, outcomes, strict=True):
                await on_sent(message, sent)
        return list(outcomes)

    async def aclose(self) -> None:
        # Waits at most one timeout for calls in flight; nothing new starts after this.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
