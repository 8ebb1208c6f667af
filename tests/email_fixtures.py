"""Real loopback servers for the email tests: an aiosmtpd SMTP server and a SendGrid v3 stand-in.

Import the fixtures into a test module (`from tests.email_fixtures import *` is avoided; name
them). The SMTP server runs in the test's event loop; the SendGrid server is a threaded
`http.server`, since the SDK it serves is blocking and runs in worker threads anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.message
import email.policy
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import make_settings

__all__ = [
    "FakeSendGrid",
    "Received",
    "Reply",
    "SmtpSink",
    "TlsFiles",
    "email_settings",
    "make_tls_files",
    "sendgrid_server",
    "smtp_sink",
    "tls_files",
]


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls_files(directory: Path) -> TlsFiles:
    """A self-signed certificate for localhost and 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TlsFiles(cert_path, key_path)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# -- SMTP --------------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    tls: bool

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    def body(self, subtype: str) -> str:
        """A body part's decoded text, with the wire's CRLF turned back into LF."""
        part = self.message.get_body((subtype,))
        assert isinstance(part, email.message.EmailMessage), f"no text/{subtype} part"
        content = part.get_content()
        assert isinstance(content, str)
        return content.replace("\r\n", "\n")


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.sink.refuse_once.pop(address, None) or self.sink.refuse.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.sink.data_replies:
            return self.sink.data_replies.popleft()
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        transport = server.transport
        tls = session.ssl is not None or (transport is not None and transport.get_extra_info("sslcontext"))
        received = Received(
            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, login, tls
        )
        self.sink.received.append(received)
        if self.sink.on_message is not None:
            await self.sink.on_message()
        return "250 2.0.0 Ok: queued"


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that keeps what it receives.

    `refuse` maps a recipient to the reply its RCPT gets (`refuse_once`: only the first time);
    `data_replies` are replies used (once each) instead of accepting DATA; `on_message` runs
    after a message is accepted.
    """

    def __init__(
        self,
        *,
        tls: TlsFiles | None = None,
        implicit_tls: bool = False,
        users: dict[str, str] | None = None,
        auth_required: bool = False,
    ) -> None:
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.users = users
        self.auth_required = auth_required
        self.received: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.refuse_once: dict[str, str] = {}
        self.data_replies: deque[str] = deque()
        self.on_message: Any = None
        self.connections = 0
        self._protocols: list[SMTP] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, user: str | None = None, password: str | None = None) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.users is not None
            and self.users.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _protocol(self) -> SMTP:
        self.connections += 1
        server_tls = self.tls.server_context() if self.tls is not None and not self.implicit_tls else None
        protocol = SMTP(
            _Handler(self),
            hostname="localhost",
            tls_context=server_tls,
            authenticator=self._authenticate if self.users is not None else None,
            auth_required=self.auth_required,
            # aiosmtpd only counts STARTTLS as TLS; an implicit-TLS socket is encrypted anyway.
            auth_require_tls=self.tls is not None and not self.implicit_tls,
            loop=asyncio.get_running_loop(),
        )
        self._protocols.append(protocol)
        return protocol

    async def start(self) -> SmtpSink:
        implicit = self.tls.server_context() if self.tls is not None and self.implicit_tls else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0, ssl=implicit)
        return self

    def drop_connections(self) -> None:
        """Close every open client connection, as a server does with idle clients."""
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        self._protocols.clear()

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    sink = await SmtpSink().start()
    yield sink
    await sink.stop()


# -- SendGrid ----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 202
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    at: float


class FakeSendGrid:
    """The part of SendGrid's v3 API we use (POST /v3/mail/send), on 127.0.0.1.

    Replies are taken from `replies` in order; when it is empty, each request gets 202 with
    an X-Message-Id. Every request is recorded, headers included, so tests can check them.
    """

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-sendgrid", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeSendGrid:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _next(self, request: Recorded) -> tuple[Reply, str]:
        with self._lock:
            self.requests.append(request)
            reply = self.replies.popleft() if self.replies else Reply()
            return reply, f"sg-{len(self.requests)}-{uuid.uuid4().hex[:8]}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:

                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                recorded = Recorded(
                    self.path, dict(self.headers.items()), json.loads(raw or b"{}"), time.monotonic()
                )
                reply, message_id = fake._next(recorded)
                if reply.delay and fake._stopping.wait(reply.delay):
                    return
                body = json.dumps(reply.body).encode() if reply.body is not None else b""
                try:
                    self.send_response(reply.status)
                    if 200 <= reply.status < 300:
                        self.send_header("X-Message-Id", message_id)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout test)

        return Handler


@pytest.fixture
def sendgrid_server() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid().start()
    yield server
    server.stop()


# -- settings and producers ------------------------------------------------------------------


@pytest.fixture
def email_settings(redis_server: RedisServer, database_url: str) -> Any:
    """A factory: settings on the test Redis and database, with email overrides."""

    def build(**overrides: Any) -> Settings:
        return make_settings(redis_server.url, **{"database_url": database_url, **overrides})

    return build
