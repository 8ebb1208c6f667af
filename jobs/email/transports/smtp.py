"""SMTP delivery with aiosmtplib: STARTTLS or implicit TLS, AUTH, and a small connection pool.

Connections are reused across jobs: a TLS handshake and AUTH per message cost more than the
message. A pooled connection the server dropped while it sat idle is noticed at `MAIL FROM`
(a disconnect or a 421 reply), before any message data went out, so one reconnect and retry
there cannot send twice. A failure after `DATA` started is ambiguous (the server may have
queued the message); it is reported as transient and the job decides.

Replies: 4xx is transient, 5xx permanent; connection errors and timeouts are transient.
Credentials are never sent over an unencrypted connection unless SMTP_STARTTLS=off says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib
from pydantic import SecretStr

from core.errors import PermanentError, TransientError
from jobs.email.mime import Outgoing, to_mime_bytes
from jobs.email.transports.base import Failed, OnSent, Sent
from settings import Settings

__all__ = ["SmtpConfig", "SmtpPool", "SmtpTransport", "smtp_error"]

# Close pooled connections idle this long: servers drop idle clients (Postfix after 300 s).
_MAX_IDLE_S = 60.0
_QUIT_TIMEOUT_S = 1.0
# What a network conversation with an SMTP server can raise.
_SMTP_ERRORS: tuple[type[BaseException], ...] = (aiosmtplib.SMTPException, OSError, TimeoutError)
# aiosmtplib's start_tls: None upgrades when the server offers STARTTLS.
_STARTTLS: dict[str, bool | None] = {"auto": None, "require": True, "off": False}
_CONNECTION_ERRORS = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: SecretStr | None = field(repr=False)
    starttls: Literal["auto", "require", "off"]
    verify: bool
    ca_file: str | None
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        if settings.smtp_url is None:
            raise PermanentError("SMTP_URL is not set; use smtp://user:password@host:port or smtps://...")
        parts = urlsplit(settings.smtp_url.get_secret_value())
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if implicit else 587),
            implicit_tls=implicit,
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password is not None else None,
            starttls=settings.smtp_starttls,
            verify=settings.smtp_tls_verify,
            ca_file=settings.smtp_ca_file,
            timeout=settings.smtp_timeout,
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _tls_context(config: SmtpConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.ca_file is not None:
        context.load_verify_locations(cafile=config.ca_file)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def smtp_error(exc: BaseException, where: str) -> TransientError | PermanentError:
    """Our error class for an aiosmtplib or socket failure, with the server's reason kept."""
    if isinstance(exc, TransientError | PermanentError):
        return exc
    cert = _cert_error(exc)
    if cert is not None:
        return PermanentError(
            f"SMTP {where}: the server's TLS certificate is not trusted ({cert.verify_message}); "
            "set SMTP_CA_FILE to its CA, or SMTP_TLS_VERIFY=false for a test server"
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = f"SMTP {where} answered {exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
            reason = f"SMTP {where} refused recipient {exc.recipient}: {exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and exc.code >= 500:
            return PermanentError(f"{reason}; check the user and password in SMTP_URL")
        return TransientError(reason) if 400 <= exc.code < 500 else PermanentError(reason)
    if isinstance(exc, _CONNECTION_ERRORS):
        return TransientError(f"SMTP {where}: {exc or type(exc).__name__}")
    # Refusals of the conversation itself: no STARTTLS or AUTH offered, and the like.
    return PermanentError(f"SMTP {where}: {exc}")


class ConnectionUnavailable(Exception):
    """No connection could be opened; `error` says why, classified."""

    def __init__(self, error: TransientError | PermanentError) -> None:
        super().__init__(str(error))
        self.error = error


class SmtpPool:
    """At most `size` connections, kept open between messages when `reuse` is on."""

    def __init__(self, config: SmtpConfig, size: int, *, reuse: bool = True) -> None:
        self.config = config
        self._reuse = reuse
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._closed = False
        self._tls_context: ssl.SSLContext | None = None
        self._quitting: set[asyncio.Future[None]] = set()
        self.opened = 0  # connections opened so far, for tests and the benchmark

    async def _tls(self) -> ssl.SSLContext:
        # Built once: loading the CA store per connection costs more than the TLS handshake.
        if self._tls_context is None:
            self._tls_context = await asyncio.to_thread(_tls_context, self.config)
        return self._tls_context

    async def open(self) -> aiosmtplib.SMTP:
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.implicit_tls,
            start_tls=False if cfg.implicit_tls else _STARTTLS[cfg.starttls],
            tls_context=await self._tls(),
            timeout=cfg.timeout,
        )
        try:
            await client.connect()
            if cfg.username is not None:
                encrypted = client.get_transport_info("sslcontext") is not None
                if not encrypted and cfg.starttls != "off":
                    raise PermanentError(
                        f"SMTP {cfg.where} offers no STARTTLS, so the password would travel in clear "
                        "text; use smtps://, a server with STARTTLS, or SMTP_STARTTLS=off for a trusted relay"
                    )
                password = cfg.password.get_secret_value() if cfg.password is not None else ""
                await client.login(cfg.username, password)
        except BaseException as exc:
            client.close()
            if isinstance(exc, (*_SMTP_ERRORS, PermanentError)):
                raise ConnectionUnavailable(smtp_error(exc, cfg.where)) from None
            raise
        self.opened += 1
        return client

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < _MAX_IDLE_S:
                return client
            client.close()
        return None

    async def _give_back(self, client: aiosmtplib.SMTP | None) -> None:
        if client is None or not client.is_connected:
            return
        if self._reuse and not self._closed:
            self._idle.append((client, time.monotonic()))
            return
        # QUIT in the background: a message just accepted must be recorded before anything else
        # is awaited (a run killed in between would send it again).
        quitting = asyncio.ensure_future(_quit(client))
        self._quitting.add(quitting)
        quitting.add_done_callback(self._quitting.discard)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[SmtpSession]:
        if self._closed:
            raise RuntimeError("the SMTP pool is closed")
        async with self._slots:
            session = SmtpSession(self, self._take_idle())
            try:
                yield session
            except BaseException:
                # The conversation's state is unknown; never hand this connection to another job.
                session.discard()
                raise
            await self._give_back(session.client)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(client) for client, _ in idle), *self._quitting)


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(*_SMTP_ERRORS):
        await asyncio.wait_for(client.quit(), _QUIT_TIMEOUT_S)
    client.close()


class SmtpSession:
    """One borrowed connection, opened on first use and reopened if the server dropped it."""

    def __init__(self, pool: SmtpPool, client: aiosmtplib.SMTP | None) -> None:
        self._pool = pool
        self.client = client
        self._reused = client is not None

    def discard(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def _connected(self) -> aiosmtplib.SMTP:
        if self.client is None or not self.client.is_connected:
            self.discard()
            self.client = await self._pool.open()
            self._reused = False
        return self.client

    async def _mail_from(self, sender: str) -> aiosmtplib.SMTP:
        client = await self._connected()
        try:
            await client.mail(sender)
        except (
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
            aiosmtplib.SMTPSenderRefused,
        ) as exc:
            stale = not isinstance(exc, aiosmtplib.SMTPSenderRefused) or exc.code == 421
            if not (self._reused and stale):
                raise
            # Dropped while idle in the pool; no message data went out, so a fresh connection is safe.
            self.discard()
            client = await self._connected()
            await client.mail(sender)
        return client

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
        except _SMTP_ERRORS:
            self.discard()

    async def transaction(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, str]:
        """Send `data` to `recipients`; return those refused while others were accepted.

        Raises aiosmtplib's errors, or `ConnectionUnavailable`. If any recipient gets a 4xx
        reply, or all are refused, nothing is sent: a retry may then reach everyone.
        """
        client = await self._mail_from(sender)
        refused: dict[str, aiosmtplib.SMTPRecipientRefused] = {}
        for recipient in recipients:
            try:
                await client.rcpt(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[recipient] = exc
        if refused:
            deferred = [exc for exc in refused.values() if 400 <= exc.code < 500]
            if deferred or len(refused) == len(recipients):
                await self._reset(client)
                raise (deferred or list(refused.values()))[0]
        await client.data(data)
        self._reused = True
        return {address: f"{exc.code} {exc.message}" for address, exc in refused.items()}


class SmtpTransport:
    """The `Transport` for SMTP_URL."""

    name = "smtp"
    # Claims per batch: a crashed run leaves at most this many claims waiting for their lease.
    batch_size = 50

    def __init__(self, config: SmtpConfig, pool_size: int, *, reuse: bool = True) -> None:
        self.config = config
        self.pool = SmtpPool(config, pool_size, reuse=reuse)

    def __repr__(self) -> str:
        tls = "implicit" if self.config.implicit_tls else self.config.starttls
        return f"SmtpTransport({self.config.where}, tls={tls})"

    async def send(self, message: Outgoing) -> Sent:
        data = to_mime_bytes(message)
        try:
            async with self.pool.session() as session:
                refused = await session.transaction(message.sender.email, [m.email for m in message.to], data)
        except ConnectionUnavailable as exc:
            raise exc.error from None
        except _SMTP_ERRORS as exc:
            raise smtp_error(exc, self.config.where) from None
        return Sent(message.message_id, refused)

    async def send_batch(
        self, messages: Sequence[Outgoing], on_sent: OnSent | None = None
    ) -> list[Sent | Failed]:
        """Each copy over the same connection; a server that cannot be reached defers the rest."""
        outcomes: list[Sent | Failed] = []
        async with self.pool.session() as session:
            for message in messages:
                try:
                    await session.transaction(
                        message.sender.email, [message.to[0].email], to_mime_bytes(message)
                    )
                except ConnectionUnavailable as exc:
                    failed = Failed(str(exc.error), isinstance(exc.error, PermanentError))
                    outcomes.extend(failed for _ in range(len(messages) - len(outcomes)))
                    break
                except _SMTP_ERRORS as exc:
                    error = smtp_error(exc, self.config.where)
                    outcomes.append(Failed(str(error), isinstance(error, PermanentError)))
                else:
                    sent = Sent(message.message_id)
                    if on_sent is not None:
                        await on_sent(message, sent)
                    outcomes.append(sent)
        return outcomes

    async def aclose(self) -> None:
        await self.pool.aclose()
