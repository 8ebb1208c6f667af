"""Email settings: transport choice, readable errors, and no secret in any repr or message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.email.transports import FileTransport, SendGridTransport, SmtpTransport, make_transport
from settings import Settings, SettingsError, load_settings


def settings(**values: Any) -> Settings:
    return load_settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, FileTransport),
        ({"smtp_url": "smtp://relay.example.com:2525"}, SmtpTransport),
        ({"sendgrid_api_key": "SG.k", "smtp_url": "smtp://relay.example.com"}, SendGridTransport),
        ({"email_transport": "smtp", "sendgrid_api_key": "SG.k", "smtp_url": "smtps://h.io"}, SmtpTransport),
        ({"email_transport": "file", "sendgrid_api_key": "SG.k"}, FileTransport),
        ({"sendgrid_api_key": "   "}, FileTransport),  # blank counts as unset
    ],
)  # fmt: skip
async def test_auto_picks_sendgrid_then_smtp_then_files(values: dict[str, Any], expected: type) -> None:
    transport = make_transport(settings(**values))
    try:
        assert isinstance(transport, expected)
    finally:
        await transport.aclose()


def test_smtp_url_parts_and_defaults() -> None:
    transport = make_transport(settings(smtp_url="smtps://mailer%40app:p%40ss@relay.example.com"))
    assert isinstance(transport, SmtpTransport)
    config = transport.config
    assert (config.host, config.port, config.implicit_tls) == ("relay.example.com", 465, True)
    assert config.username == "mailer@app"
    assert config.password is not None
    assert config.password.get_secret_value() == "p@ss"
    plain = make_transport(settings(smtp_url="smtp://relay.example.com"))
    assert isinstance(plain, SmtpTransport)
    assert plain.config.port == 587


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"email_transport": "sendgrid"}, "EMAIL_TRANSPORT: 'sendgrid' needs SENDGRID_API_KEY; set it"),
        ({"email_transport": "smtp"}, "EMAIL_TRANSPORT: 'smtp' needs SMTP_URL"),
        ({"email_transport": "ses"}, "EMAIL_TRANSPORT: Input should be 'sendgrid', 'smtp', 'file' or 'auto'"),
        ({"smtp_url": "http://relay.example.com"}, "SMTP_URL: scheme 'http' is not supported; use smtp:// or smtps://"),
        ({"smtp_starttls": "maybe"}, "SMTP_STARTTLS: Input should be 'auto', 'require' or 'off'"),
        ({"smtp_ca_file": "/no/such/ca.pem"}, "SMTP_CA_FILE: no such file"),
        ({"smtp_pool_size": 0}, "SMTP_POOL_SIZE: Input should be greater than or equal to 1"),
        ({"sendgrid_timeout": 0}, "SENDGRID_TIMEOUT: Input should be greater than 0"),
        ({"email_claim_lease": 30}, "EMAIL_CLAIM_LEASE: Input should be greater than or equal to 60"),
        ({"email_from": "Max Booster <no-reply@maxbooster.local>"}, "EMAIL_FROM: not a valid sender"),
        ({"sendgrid_api_host": "ftp://api.sendgrid.com"}, "SENDGRID_API_HOST: scheme 'ftp' is not supported"),
    ],
)  # fmt: skip
def test_bad_values_name_the_variable_and_the_fix(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        settings(**values)
    assert message in str(error.value)


def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    values = {
        "sendgrid_api_key": "SG.never-shown-1",
        "smtp_url": "smtp://mailer:never-shown-2@relay.example.com",
    }
    loaded = settings(**values)
    sendgrid = make_transport(loaded)
    smtp = make_transport(loaded.model_copy(update={"email_transport": "smtp"}))
    text = " ".join(
        [repr(loaded), str(loaded), repr(sendgrid), repr(smtp), repr(getattr(smtp, "config", None))]
    )
    assert "never-shown" not in text
    with pytest.raises(SettingsError) as error:
        settings(smtp_url="smtp://mailer:never-shown-3@relay.example.com:port")
    assert "never-shown" not in str(error.value)
    assert "SMTP_URL: the port is not a number; use smtp://host:port" in str(error.value)
    assert "smtp://mailer:***@relay.example.com:port" in str(error.value)
