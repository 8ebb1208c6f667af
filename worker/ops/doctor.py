"""`python -m worker doctor`: what works, what is degraded and why, and how to fix it.

Each dependency is checked live with short timeouts. A check reports one of four states:
ok, degraded (works, but something can lose jobs or mail), not working, not configured; each
problem comes with a one-line fix. Then the doctor says what the runner will do in this state.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib
import asyncpg
import httpx
import orjson

from core.deps import connect_postgres
from core.errors import BackendError, CredentialsRefused, scrub
from settings import Settings, redact_url
from worker.backend import RedisBackend
from worker.ledger.migrate import has_legacy_layout, pending_migrations, postgres_problem

__all__ = ["Check", "Diagnosis", "diagnose", "render_diagnosis"]

State = Literal["ok", "degraded", "not working", "not configured"]
TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Check:
    component: str
    state: State
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Diagnosis:
    checks: list[Check]
    behaviour: list[str]

    @property
    def healthy(self) -> bool:
        return all(c.state != "not working" for c in self.checks)

    def state_of(self, component: str) -> State:
        return next(c.state for c in self.checks if c.component == component)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.healthy, "checks": [asdict(c) for c in self.checks], "behaviour": self.behaviour}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


async def check_redis(settings: Settings) -> Check:
    if not settings.redis_enabled:
        return Check(
            "redis", "not configured", "REDIS_URL is empty", "set REDIS_URL=redis://host:6379/0 to queue jobs"
        )
    where = settings.redis_url_redacted
    patient = settings.model_copy(
        update={"redis_socket_timeout": TIMEOUT_S, "redis_connect_timeout": TIMEOUT_S}
    )
    backend = RedisBackend(patient, role="doctor")
    try:
        async with asyncio.timeout(TIMEOUT_S * 2):
            info = await backend.server_info()
    except (BackendError, OSError, TimeoutError) as exc:
        text = _error(exc)
        if isinstance(exc, CredentialsRefused):
            text = "Redis refused the credentials (a wrong user or password, or an ACL missing a command)"
            fix = (
                "check the user and password in REDIS_URL, or grant the user the commands the "
                "README's least-privilege section lists"
            )
        elif any(
            word in text
            for word in ("WRONGPASS", "NOAUTH", "Authentication", "invalid username", "credentials")
        ):
            fix = "check the user and password in REDIS_URL"
        elif isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text:
            fix = "check the TLS settings (rediss://, CA file) against the server's certificate"
        else:
            fix = f"start Redis or point REDIS_URL at it (tried {where})"
        return Check("redis", "not working", text, fix)
    finally:
        await backend.aclose()
    detail = f"Redis {info.version} at {where}" + (" over TLS" if where.startswith("rediss://") else "")
    problems, fixes = [], []
    if info.maxmemory_policy != "noeviction":
        problems.append(f"maxmemory-policy {info.maxmemory_policy} can evict queued jobs")
        fixes.append("set maxmemory-policy noeviction")
    if not info.aof_enabled and info.save_schedule == "":
        problems.append("no persistence: a restart loses every queued job")
        fixes.append("enable appendonly yes")
    if problems:
        return Check("redis", "degraded", f"{detail}; " + "; ".join(problems), "; ".join(fixes))
    return Check("redis", "ok", detail)


async def check_postgres(settings: Settings) -> Check:
    where = settings.database_url_redacted
    try:
        conn = await connect_postgres(settings, timeout=TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        fix = postgres_problem(settings, exc).split("; ", 1)[-1]
        return Check("postgres", "not working", _error(exc), f"{fix} (tried {where})")
    schema = settings.database_schema
    try:
        version = str(await conn.fetchval("SHOW server_version")).split()[0]
        legacy = await has_legacy_layout(conn, schema)
        pending = await pending_migrations(conn, schema=schema)
    finally:
        await conn.close()
    detail = f"PostgreSQL {version} at {where}, schema {schema}"
    if legacy:
        return Check(
            "postgres",
            "degraded",
            f"{detail}; the runner's tables are still in public (an older layout)",
            f"run python -m worker migrate: it moves them into schema {schema}",
        )
    if pending:
        return Check(
            "postgres",
            "degraded",
            f"{detail}; {len(pending)} migration(s) pending",
            "run python -m worker migrate",
        )
    return Check("postgres", "ok", f"{detail}; migrations current")


def _email_transport(settings: Settings) -> str:
    if settings.email_transport != "auto":
        return settings.email_transport
    if settings.sendgrid_api_key is not None:
        return "sendgrid"
    return "smtp" if settings.smtp_url is not None else "file"


async def check_email(settings: Settings) -> Check:
    transport = _email_transport(settings)
    if transport == "file":
        return Check(
            "email",
            "not configured",
            f"mail is written as .eml files to {settings.email_file_dir}, not delivered",
            "set SENDGRID_API_KEY or SMTP_URL",
        )
    if transport == "sendgrid":
        key = settings.sendgrid_api_key.get_secret_value() if settings.sendgrid_api_key else ""
        parts = key.split(".")
        if not key:
            return Check(
                "email", "not working", "EMAIL_TRANSPORT=sendgrid but no key", "set SENDGRID_API_KEY"
            )
        if len(parts) != 3 or parts[0] != "SG" or not all(parts[1:]):
            return Check(
                "email",
                "not working",
                "SENDGRID_API_KEY is not a SendGrid key",
                "use the SG.xxx.yyy key SendGrid issued",
            )
        return Check("email", "ok", f"SendGrid key present and well-formed; API {settings.sendgrid_api_host}")
    return await _check_smtp(settings)


async def _check_smtp(settings: Settings) -> Check:
    if settings.smtp_url is None:
        return Check("email", "not working", "EMAIL_TRANSPORT=smtp but SMTP_URL is unset", "set SMTP_URL")
    url = urlsplit(settings.smtp_url.get_secret_value())
    implicit_tls = url.scheme == "smtps"
    client = aiosmtplib.SMTP(
        hostname=url.hostname, port=url.port or (465 if implicit_tls else 587), use_tls=implicit_tls,
        start_tls=None if settings.smtp_starttls == "auto" else settings.smtp_starttls == "require",
        timeout=TIMEOUT_S,
    )  # fmt: skip
    where = f"{url.hostname}:{client.port}"
    try:
        await client.connect()
        if url.username:
            encrypted = client.get_transport_info("sslcontext") is not None
            if not encrypted and settings.smtp_starttls != "off":
                # The transport refuses this too: never send the password in clear text.
                return Check(
                    "email",
                    "not working",
                    f"SMTP {where} offers no STARTTLS, so the password would travel in clear text; "
                    "doctor did not send it",
                    "use smtps://, a server with STARTTLS, or SMTP_STARTTLS=off for a trusted relay",
                )
            await client.login(unquote(url.username), unquote(url.password or ""))
    except aiosmtplib.SMTPAuthenticationError as exc:
        return Check("email", "not working", f"SMTP {where} refused AUTH: {exc.code} {exc.message}",
                     "check the user and password in SMTP_URL")  # fmt: skip
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return Check(
            "email", "not working", f"SMTP {where}: {_error(exc)}", "start the SMTP server or fix SMTP_URL"
        )
    finally:
        if client.is_connected:
            client.close()
    return Check("email", "ok", f"SMTP {where} accepts connections" + (" and AUTH" if url.username else ""))


async def check_ai(settings: Settings) -> Check:
    if not settings.ai_base_url or not settings.ai_model:
        return Check(
            "ai",
            "not configured",
            "no AI endpoint",
            "set AI_BASE_URL and AI_MODEL (and AI_API_KEY if needed)",
        )
    headers = (
        {"Authorization": f"Bearer {settings.ai_api_key.get_secret_value()}"} if settings.ai_api_key else {}
    )
    where = redact_url(settings.ai_base_url)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            response = await http.get(f"{settings.ai_base_url}/models", headers=headers)
    except httpx.HTTPError as exc:
        return Check(
            "ai",
            "not working",
            f"{where}: {scrub(_error(exc), settings.secret_values())}",
            "start the endpoint or fix AI_BASE_URL",
        )
    if response.status_code in (401, 403):
        return Check(
            "ai", "not working", f"the endpoint refused the key ({response.status_code})", "check AI_API_KEY"
        )
    if response.status_code != 200:
        return Check("ai", "degraded", f"GET /models answered {response.status_code}", "check AI_BASE_URL")
    try:
        models = [m["id"] for m in response.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return Check("ai", "degraded", "GET /models did not return a model list", "check AI_BASE_URL")
    if settings.ai_model not in models:
        shown = ", ".join(models[:5]) or "none"
        return Check(
            "ai", "degraded", f"model {settings.ai_model!r} is not listed", f"set AI_MODEL to one of: {shown}"
        )
    return Check("ai", "ok", f"{where} serves {settings.ai_model}")


def _behaviour(checks: dict[str, Check]) -> list[str]:
    lines = []
    redis = checks["redis"].state
    postgres_up = checks["postgres"].state != "not working"
    if redis in ("ok", "degraded"):
        lines.append("Redis up: jobs are queued and run by the worker")
    elif postgres_up:
        lines.append(
            "Redis down: inline-policy jobs (email) run in the caller's process; spool-policy jobs (AI, "
            "analytics) and deferred jobs wait in the Postgres spool until Redis returns"
        )
    else:
        lines.append(
            "Redis and Postgres down: inline-policy jobs run in the caller's process; spool-policy jobs run "
            "inline if they allow it, else the caller gets an error; deferred jobs are refused"
        )
    if not postgres_up:
        lines.append("Postgres down: jobs that need it (email idempotency, analytics) retry, then fail")
    if checks["email"].state == "not configured":
        lines.append("Email: written to files, not delivered")
    elif checks["email"].state == "not working":
        lines.append("Email: send_email jobs fail and are retried until the transport works")
    if checks["ai"].state == "not configured":
        lines.append("AI: AI jobs are refused at enqueue with the settings to set")
    return lines


async def check_signing(settings: Settings) -> Check:
    keys = settings.signing_keys
    if not keys:
        return Check(
            "signing",
            "degraded",
            "job records are not signed: anyone who can write to Redis can run any job with any arguments",
            "set JOB_SIGNING_KEYS (the same keys on every producer and worker; README, Security)",
        )
    detail = f"job and result records signed (HMAC-SHA256), {len(keys)} key(s)"
    if settings.job_signing_accept_unsigned:
        return Check(
            "signing",
            "degraded",
            f"{detail}; unsigned records are still accepted (JOB_SIGNING_ACCEPT_UNSIGNED)",
            "turn JOB_SIGNING_ACCEPT_UNSIGNED off once the jobs queued before signing have run",
        )
    return Check("signing", "ok", detail)


def _installed(*modules: str) -> bool:
    """Whether the packages are installed, without importing them."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in modules)
    except ModuleNotFoundError:
        return False


async def check_tracing(settings: Settings) -> Check:
    """OpenTelemetry: configured by OTEL_*, installed, and the collector takes OTLP/HTTP."""
    if not settings.tracing_configured:
        return Check(
            "tracing",
            "not configured",
            "no traces: neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_TRACES_EXPORTER is set",
            "set OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 (with the otel extra installed)",
        )
    if not _installed("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        return Check(
            "tracing",
            "not working",
            "OTEL_* asks for traces but the OpenTelemetry packages are not installed",
            "pip install 'maxbooster-jobs[otel]'",
        )
    metrics = "; OTel metrics on" if settings.otel_metrics_configured else ""
    if settings.otel_traces_exporter == "console":
        return Check(
            "tracing", "ok", f"spans are printed to standard output (OTEL_TRACES_EXPORTER=console){metrics}"
        )
    url = settings.otlp_url("traces")
    where = redact_url(url)
    headers = {**settings.otlp_headers, "Content-Type": "application/x-protobuf"}
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            # An export with no spans: a collector answers it as it would a real one, and stores nothing.
            response = await http.post(url, content=b"", headers=headers)
    except httpx.HTTPError as exc:
        return Check(
            "tracing",
            "not working",
            f"{where}: {scrub(_error(exc), settings.secret_values())}",
            "start the collector or fix OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP, usually port 4318)",
        )
    if response.status_code in (401, 403):
        return Check(
            "tracing",
            "not working",
            f"{where} refused the export ({response.status_code})",
            "check the key in OTEL_EXPORTER_OTLP_HEADERS",
        )
    if response.status_code != 200:
        return Check(
            "tracing",
            "not working",
            f"{where} answered {response.status_code} to an OTLP/HTTP export",
            "point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP receiver (port 4318)",
        )
    return Check("tracing", "ok", f"spans go to {where} (OTLP/HTTP), which accepts them{metrics}")


def _sentry_envelope_url(dsn: str) -> tuple[str, str]:
    """The envelope endpoint of a DSN and its public key."""
    parts = urlsplit(dsn)
    prefix, _, project = parts.path.rstrip("/").rpartition("/")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{prefix}/api/{project}/envelope/", parts.username or ""


async def check_error_reports(settings: Settings) -> Check:
    """Sentry: SENTRY_DSN set, the SDK installed, and the project takes events with that key."""
    if settings.sentry_dsn is None:
        return Check(
            "errors",
            "not configured",
            "no error reports: SENTRY_DSN is not set",
            "set SENTRY_DSN to your Sentry project's DSN (with the sentry extra installed)",
        )
    if not _installed("sentry_sdk"):
        return Check(
            "errors",
            "not working",
            "SENTRY_DSN is set but the Sentry SDK is not installed",
            "pip install 'maxbooster-jobs[sentry]'",
        )
    url, key = _sentry_envelope_url(settings.sentry_dsn.get_secret_value())
    where = settings.sentry_dsn_redacted
    # A client report that discards nothing: accepted like any envelope, it creates no issue.
    now = time.time()
    envelope = b"\n".join(
        [
            orjson.dumps({"sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}),
            orjson.dumps({"type": "client_report"}),
            orjson.dumps({"timestamp": now, "discarded_events": []}),
        ]
    )
    auth = f"Sentry sentry_version=7, sentry_key={key}, sentry_client=maxbooster-jobs-doctor/1"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            response = await http.post(
                url,
                content=envelope,
                headers={"X-Sentry-Auth": auth, "Content-Type": "application/x-sentry-envelope"},
            )
    except httpx.HTTPError as exc:
        return Check(
            "errors",
            "not working",
            f"{where}: {scrub(_error(exc), settings.secret_values())}",
            "check SENTRY_DSN's host, and that this machine can reach it",
        )
    if response.status_code in (401, 403):
        return Check(
            "errors",
            "not working",
            f"{where} refused the DSN's key ({response.status_code})",
            "check SENTRY_DSN",
        )
    if response.status_code == 404:
        return Check(
            "errors", "not working", f"{where}: no such project", "check the project id in SENTRY_DSN"
        )
    if response.status_code == 429:
        return Check(
            "errors", "degraded", f"{where} is rate-limiting this project", "check the project's quota"
        )
    if response.status_code != 200:
        return Check("errors", "degraded", f"{where} answered {response.status_code}", "check SENTRY_DSN")
    retries = "every failed try" if settings.sentry_report_retries else "final failures"
    return Check(
        "errors", "ok", f"Sentry at {where} accepts events; {retries} and worker crashes are reported"
    )


async def diagnose(settings: Settings) -> Diagnosis:
    probes: list[Callable[[Settings], Awaitable[Check]]] = [
        check_redis,
        check_postgres,
        check_email,
        check_ai,
        check_signing,
        check_tracing,
        check_error_reports,
    ]
    checks = list(await asyncio.gather(*(probe(settings) for probe in probes)))
    return Diagnosis(checks, _behaviour({c.component: c for c in checks}))


def render_diagnosis(diagnosis: Diagnosis) -> str:
    lines = [f"{'component':<11}{'state':<16}detail / fix"]
    for c in diagnosis.checks:
        lines.append(f"{c.component:<11}{c.state:<16}{c.detail}")
        if c.fix:
            lines.append(f"{'':<27}fix: {c.fix}")
    lines += ["", "What the runner will do:"] + [f"  - {line}" for line in diagnosis.behaviour]
    return "\n".join(lines)
