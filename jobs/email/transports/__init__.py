"""Email transports and the `EMAIL_TRANSPORT` resource that builds the configured one.

EMAIL_TRANSPORT=sendgrid|smtp|file|auto; `auto` is SendGrid if SENDGRID_API_KEY is set, else
SMTP if SMTP_URL is, else .eml files in EMAIL_FILE_DIR. Built on first use by `Deps` and
closed with it, so the worker and the inline runner get the same kind of transport.
"""

from __future__ import annotations

from core.deps import Resource
from core.errors import PermanentError
from jobs.email.transports.base import Failed, Sent, Transport
from jobs.email.transports.file import FileTransport
from jobs.email.transports.sendgrid import SendGridTransport
from jobs.email.transports.smtp import SmtpConfig, SmtpTransport
from settings import Settings

__all__ = [
    "EMAIL_TRANSPORT",
    "Failed",
    "FileTransport",
    "SendGridTransport",
    "Sent",
    "SmtpTransport",
    "Transport",
    "make_transport",
]


def make_transport(settings: Settings) -> Transport:
    kind = settings.email_transport_resolved
    if kind == "sendgrid":
        if settings.sendgrid_api_key is None:  # settings refuse this; keep mypy and readers sure
            raise PermanentError("EMAIL_TRANSPORT=sendgrid needs SENDGRID_API_KEY")
        return SendGridTransport(
            settings.sendgrid_api_key,
            host=settings.sendgrid_api_host,
            timeout=settings.sendgrid_timeout,
            max_concurrency=settings.sendgrid_max_concurrency,
        )
    if kind == "smtp":
        return SmtpTransport(SmtpConfig.from_settings(settings), settings.smtp_pool_size)
    return FileTransport(settings.email_file_dir)


async def _create(settings: Settings) -> Transport:
    return make_transport(settings)


async def _close(transport: Transport) -> None:
    await transport.aclose()


EMAIL_TRANSPORT: Resource[Transport] = Resource("email_transport", _create, _close)
