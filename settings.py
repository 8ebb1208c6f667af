"""The one place that reads the environment (and an optional `.env` file).

Every other module receives a `Settings` instance. Invalid values fail at start with a
`SettingsError` that names the variable, shows the bad value (secrets redacted) and says how
to fix it. Secrets are `SecretStr` so neither `repr()` nor logs can show them.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_DATABASE",
    "QUEUE_NAME_RULE",
    "Settings",
    "SettingsError",
    "load_settings",
    "parse_api_tokens",
    "parse_dashboard_tokens",
    "parse_otlp_headers",
    "redact_url",
]

DEFAULT_DATABASE = "maxbooster_jobs"

_SECRET_FIELDS = {
    "redis_url",
    "database_url",
    "smtp_url",
    "sendgrid_api_key",
    "ai_api_key",
    "job_signing_keys",
    "api_tokens",
    "dashboard_tokens",
    "dashboard_session_secret",
    "otel_exporter_otlp_headers",
    "sentry_dsn",
}

# A fix hint per field, used when pydantic's own message is all we have.
_FIX_HINTS: dict[str, str] = {
    "redis_url": "use redis://[user:password@]host:port/db or rediss://...; empty disables Redis",
    "database_url": "use postgresql://user:password@host:port/dbname",
    "database_schema": "use a lowercase name such as jobrunner (letters, digits, _; not public or pg_*)",
    "app_url": "use the web app's root URL, e.g. https://maxbooster.ai",
    "log_level": "use one of DEBUG, INFO, WARNING, ERROR",
    "log_format": "use json, console or auto",
    "email_transport": "use sendgrid, smtp, file or auto",
    "smtp_url": "use smtp://user:password@host:port or smtps://...",
    "ai_base_url": "use the API root, e.g. https://api.openai.com/v1 or http://localhost:11434/v1",
    "ai_timeout": "use seconds per request, more than 0 and at most 600",
    "ai_max_concurrency": "use a whole number of requests from 1 to 1000",
    "ai_requests_per_minute": "use a whole number from 1 to 100000, or 0 for no budget",
    "ai_cache_ttl": "use seconds from 0 (no caching) to 2592000 (30 days)",
    "ai_max_output_retries": "use a whole number from 0 to 10",
    "smtp_starttls": "use auto (upgrade when offered), require or off",
    "email_from": 'use "Name <address@example.com>" or address@example.com',
    "worker_batch_size": "use 1 to 1000 jobs per claim and per outcome write (default 100)",
    "worker_claim_ahead": "use 0 (never claim ahead) to 60 seconds of average attempt time (default 0.05)",
    "worker_idle_block": "use 0.05 to 3600 seconds; longer blocks cost an idle worker fewer commands",
    "worker_event_loop": "use asyncio (the default) or uvloop",
    "worker_health_interval": "use 1 to 86400 seconds; the health key lives 10 s longer than this",
    "job_signing_keys": "use keys of at least 32 characters, separated by commas (the first signs)",
    "email_allowed_from": "use a comma-separated list of domains (example.com) or addresses (a@example.com)",
    "worker_max_interruptions": "use 0 to 100 interrupted runs (worker killed or stopped mid-run)",
    "api_tokens": "use tokens separated by spaces, each optionally limited to jobs: 'TOKEN TOKEN2:job1,job2'",
    "api_max_body_bytes": "use 1024 to 268435456 bytes (default 4194304)",
    "api_max_batch_jobs": "use 1 to 100000 jobs per batch call",
    "job_modules": "list importable module names separated by commas (myapp.jobs,myapp.reports)",
    "worker_queues": "list queue names in priority order (critical,default,bulk,ai) or with weights",
    "worker_queue_concurrency": "use queue=count pairs separated by commas (ai=4,bulk=20)",
    "queue_global_concurrency": "use queue=count pairs separated by commas (ai=8)",
    "rate_limits": "use name=count/unit pairs separated by commas (ai_requests=500/min,email=14/s)",
    "dashboard_tokens": "use tokens separated by spaces: TOKEN, TOKEN:viewer, TOKEN:operator:NAME",
    "dashboard_session_secret": "use at least 32 random characters, e.g. from "
    "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
    "dashboard_session_hours": "use more than 0 and at most 720 hours",
    "dashboard_refresh_s": "use 1 to 3600 seconds",
    "otel_traces_exporter": "use otlp, console or none",
    "otel_metrics_exporter": "use otlp, console or none",
    "otel_exporter_otlp_protocol": "use http/protobuf (a collector takes it on port 4318)",
    "otel_exporter_otlp_headers": "use key=value pairs separated by commas (api-key=abc,team=jobs)",
    "sentry_dsn": "use the DSN of your Sentry project: https://PUBLIC_KEY@HOST/PROJECT_ID",
}

# An API token: at least 16 characters, none of them whitespace, ':' or ','.
_API_TOKEN = re.compile(r"^[^\s:,]{16,512}$")
_JOB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$")


def parse_api_tokens(raw: str) -> list[tuple[str, frozenset[str] | None]]:
    """`API_TOKENS` as (token, allowed jobs or None for all): entries separated by whitespace,
    each `TOKEN` or `TOKEN:job1,job2` (`events` allows POST /v1/events). Raises ValueError
    without ever showing a token."""
    entries: list[tuple[str, frozenset[str] | None]] = []
    for n, entry in enumerate(raw.split(), start=1):
        token, colon, scope = entry.partition(":")
        if not colon and "," in token:
            raise ValueError(
                f"entry {n} has a ',' but no ':'; use spaces between tokens (',' separates jobs)"
            )
        if not _API_TOKEN.match(token):
            raise ValueError(
                f"token {n} is too short or holds ':' or ','; use 16 to 512 characters, e.g. from "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        jobs = frozenset(j for j in scope.split(",") if j) if colon else None
        if jobs is not None and (not jobs or not all(_JOB_NAME.match(j) for j in jobs)):
            raise ValueError(f"token {n} has no valid job names after ':'; use TOKEN:send_email,ping")
        entries.append((token, jobs))
    if len({token for token, _ in entries}) != len(entries):
        raise ValueError("a token is listed twice; use each token once")
    return entries


def parse_otlp_headers(raw: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS (`key=value,key2=value2`, values percent-encoded) as a dict.
    Raises ValueError without showing a value."""
    headers: dict[str, str] = {}
    for n, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        key, eq, value = entry.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"entry {n} is not key=value")
        headers[key.strip().lower()] = unquote(value.strip())
    return headers


DASHBOARD_ROLES = ("operator", "viewer")
_PERSON = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def parse_dashboard_tokens(raw: str) -> list[tuple[str, str, str | None]]:
    """`DASHBOARD_TOKENS` as (token, role, name or None): entries separated by whitespace, each
    `TOKEN`, `TOKEN:ROLE` or `TOKEN:ROLE:NAME` (role `operator`, the default, or `viewer`; the
    name is who the audit log says acted). Raises ValueError without ever showing a token."""
    entries: list[tuple[str, str, str | None]] = []
    for n, entry in enumerate(raw.split(), start=1):
        token, _, rest = entry.partition(":")
        role, _, name = rest.partition(":")
        if not _API_TOKEN.match(token):
            raise ValueError(
                f"token {n} is too short or holds ':' or ','; use 16 to 512 characters, e.g. from "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        role = role or "operator"
        if role not in DASHBOARD_ROLES:
            raise ValueError(f"token {n} has the role {role[:20]!r}; use operator or viewer")
        if name and not _PERSON.match(name):
            raise ValueError(f"token {n}: the name after the role must be 1 to 64 letters, digits or _ . @ -")
        entries.append((token, role, name or None))
    if len({token for token, _, _ in entries}) != len(entries):
        raise ValueError("a token is listed twice; use each token once")
    return entries


# Query options whose values are secrets (redis-py takes `?password=`).
# A value runs to the next `&` or `;` (an unescaped `#`, `?` or `@` in it is still hidden).
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|api_key|apikey|key)=)[^&;]*")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, safe for logs and error messages.

    Credentials end at the last `@` before the host, so a password with an unescaped `/`, `#`, `?`
    or `@` is still hidden whole; a password given as a query option is hidden too. Never raises.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = _SECRET_QUERY.sub(r"\1***", rest)  # first, so an `@` in a query password is gone
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{hostpart}"
    return f"{scheme}{sep}{rest}"


def _url_secrets(url: str) -> list[str]:
    """The password of a URL (as written and percent-decoded) and secret query options."""
    rest = url.partition("://")[2] or url
    found = [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(rest)]
    userinfo, at, _ = _SECRET_QUERY.sub("", rest).rpartition("@")
    if at and ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        found += [password, unquote(password)]
    return found


def _check_url(value: str, schemes: tuple[str, ...], what: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not supported; use {wanted}")
    if not parts.hostname:
        raise ValueError(f"no host in the {what} URL; use {schemes[0]}://host:port")
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise ValueError(f"the port is not a number; use {schemes[0]}://host:port") from None


# Query options redis-py would read from the URL to weaken or replace TLS verification.
_TLS_URL_OPTIONS = {
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_ca_path",
}


# A queue's name: what `define(queue=...)`, `enqueue(queue=...)` and WORKER_QUEUES use.
QUEUE_NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_LIMIT_NAME = re.compile(r"[A-Za-z0-9_]{1,60}")
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def _queue_name(name: str) -> str:
    if not QUEUE_NAME_RULE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a queue name; use 1-40 lowercase letters, digits, _ and - (critical, ai)"
        )
    return name


def _pairs(value: str) -> list[tuple[str, str]]:
    """`a=1,b=2` as pairs; a malformed entry raises ValueError saying which."""
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, eq, rest = entry.partition("=")
        if not eq or not name.strip() or not rest.strip():
            raise ValueError(f"{entry!r} is not name=value")
        out.append((name.strip(), rest.strip()))
    return out


def _rate(name: str, value: str) -> tuple[int, float]:
    count, slash, unit = value.partition("/")
    if not slash or not count.strip().isdigit() or unit.strip() not in _PER or int(count) < 1:
        raise ValueError(f"the limit {name!r} is {value!r}; write it as a count per s, min or h (600/min)")
    return int(count), _PER[unit.strip()]


class SettingsError(ValueError):
    """Raised by `load_settings` with one readable line per bad variable."""


# The sender when EMAIL_FROM is unset (`.local` and `.test` are refused by email-validator, as
# not globally deliverable); set a real verified sender in production.
DEFAULT_EMAIL_FROM = "Max Booster <no-reply@maxbooster.example>"


class Settings(BaseSettings):
    """Runtime configuration; field `foo_bar` is read from environment variable `FOO_BAR`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Redis and the fallback to inline execution.
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_connect_timeout: float = Field(0.25, gt=0, le=30)
    redis_socket_timeout: float = Field(0.25, gt=0, le=60)
    redis_probe_interval: float = Field(1.0, gt=0, le=300)
    worker_redis_socket_timeout: float = Field(5.0, gt=0, le=300)
    # TLS for rediss:// URLs: verification is on unless REDIS_TLS_INSECURE=true.
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_tls_insecure: bool = False
    queue_name: str = Field("arq:queue", min_length=1)

    # A database of the runner's own by default (the dev services create it); never the
    # `postgres` maintenance database.
    database_url: SecretStr = SecretStr(f"postgresql://postgres@localhost:5432/{DEFAULT_DATABASE}")
    # Every runner table lives in this Postgres schema, away from the web app's ORM tables.
    database_schema: str = "jobrunner"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"

    # Job execution defaults; a job's own definition may override timeout and tries.
    job_timeout: float = Field(300.0, gt=0, le=86400)
    job_max_tries: int = Field(5, ge=1, le=100)
    retry_backoff_base: float = Field(1.0, ge=0, le=3600)
    retry_backoff_max: float = Field(300.0, ge=0, le=86400)
    job_keep_result: float = Field(3600.0, ge=0)
    max_payload_bytes: int = Field(256 * 1024, ge=1024)
    inline_max_background: int = Field(64, ge=1, le=10000)
    # Jobs one producer runs inline at once while Redis is down, awaited ones included; a caller
    # beyond that waits up to INLINE_WAIT_TIMEOUT for a slot, then gets an EnqueueError.
    inline_max_concurrent: int = Field(32, ge=1, le=10000)
    inline_wait_timeout: float = Field(10.0, ge=0, le=3600)
    # Signing of job and result records (HMAC-SHA256): the first key signs, every key verifies.
    job_signing_keys: SecretStr | None = None
    # A migration window: accept records without a signature (a wrong one is still refused).
    job_signing_accept_unsigned: bool = False

    # Worker.
    worker_max_jobs: int = Field(100, ge=1, le=10000)
    # Most jobs one claim takes and one outcome write records; also the bulk-enqueue chunk.
    worker_batch_size: int = Field(100, ge=1, le=1000)
    # Seconds: while a worker's attempts take less than this on average, it claims up to one
    # batch ahead of its free slots, so its next jobs are at hand when slots free (0 = never).
    worker_claim_ahead: float = Field(0.05, ge=0, le=60)
    # Seconds an idle worker blocks on its wake-up before sending the next block.
    worker_idle_block: float = Field(30.0, ge=0.05, le=3600)
    # Seconds between writes of the health key (arq's `<queue>:health-check`).
    worker_health_interval: float = Field(300.0, ge=1, le=86400)
    # The worker's event loop: uvloop spends less of the one loop thread per job (see README).
    worker_event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    worker_shutdown_grace: float = Field(30.0, ge=0, le=3600)
    # A running job's lock lives this long unless its worker, while alive, keeps extending it; a
    # SIGKILLed worker's jobs run again elsewhere within about this time.
    worker_lock_timeout: float = Field(15.0, ge=3, le=3600)
    # Runs of one job that were interrupted (its worker killed, or stopped past the shutdown
    # grace) before the job fails; they do not count as tries.
    worker_max_interruptions: int = Field(3, ge=0, le=100)
    # The largest job record a worker reads; a bigger one is dead-lettered unread.
    worker_max_record_bytes: int = Field(1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    # How often the worker re-enqueues durable jobs that Redis has lost.
    durable_check_interval: float = Field(15.0, gt=0, le=3600)
    worker_http_host: str = "127.0.0.1"
    worker_http_port: int = Field(9300, ge=0, le=65535)

    # Modules of your own whose module-level `define(...)` results join the registry, for the
    # worker, the producer, the CLI and the HTTP service alike ("myapp.jobs,myapp.reports").
    job_modules: str = ""

    # Named queues (README "Queues"). The queues a worker consumes: in strict priority order
    # ("critical,default,bulk,ai"), or weighted ("critical:6,default:3,bulk:1": each claim visits
    # the queues in a random order drawn by weight).
    worker_queues: str = "critical,default,bulk,ai"
    # At most this many jobs of a queue run at once in one worker ("ai=4,bulk=20").
    worker_queue_concurrency: str = "ai=4"
    # At most this many jobs of a queue run at once across all workers, held in Redis ("ai=8").
    queue_global_concurrency: str = ""
    # Rate limits shared by every worker, held in Redis ("ai_requests=500/min,email=14/s"); a job
    # over a limit waits in its queue until its turn. Names are the ones jobs declare.
    rate_limits: str = ""

    # The HTTP enqueue API, `python -m worker serve`.
    api_host: str = "127.0.0.1"
    api_port: int = Field(9400, ge=0, le=65535)
    # Bearer tokens separated by spaces (several, for rotation); `TOKEN:job1,job2` limits one to
    # those jobs. `serve` refuses to start without one unless API_DEV_NO_AUTH on a loopback host.
    api_tokens: SecretStr | None = None
    api_dev_no_auth: bool = False
    api_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    api_max_batch_jobs: int = Field(10_000, ge=1, le=100_000)

    # The ops dashboard, served by `serve` at /ui.
    dashboard_enabled: bool = True
    # Who may log in (see `parse_dashboard_tokens`); unset: the API_TOKENS, where a token
    # limited to some jobs is a viewer.
    dashboard_tokens: SecretStr | None = None
    # Signs session cookies; unset: a random key per process (sessions end when it restarts).
    dashboard_session_secret: SecretStr | None = None
    dashboard_session_hours: float = Field(12.0, gt=0, le=720)
    # How often an open page refreshes itself (each refresh costs a few Redis commands).
    dashboard_refresh_s: float = Field(5.0, ge=1, le=3600)

    # Email. `auto` picks sendgrid if SENDGRID_API_KEY is set, else smtp if SMTP_URL is, else file.
    email_transport: Literal["sendgrid", "smtp", "file", "auto"] = "auto"
    # Not checked when unset (settings check their defaults): checking imports email-validator.
    email_from: str = Field(DEFAULT_EMAIL_FROM, validate_default=False)
    email_file_dir: str = "var/mail"
    # Who may appear as a message's sender (from_address): domains or addresses; unset means the
    # domain of EMAIL_FROM.
    email_allowed_from: str | None = None
    # A bulk email to more recipients than this is never sent inline from a caller's process
    # while Redis is down: it waits in the spool for a worker.
    email_inline_max_recipients: int = Field(50, ge=1, le=100_000)
    # Where links in emails point when the caller gives none (a dashboard, a support ticket).
    app_url: str = "https://maxbooster.ai"
    # A claim on an idempotency key blocks other runs for this long; it must outlast one
    # send_email run (60 s timeout), or a slow live run could be overtaken and send twice.
    email_claim_lease: float = Field(120.0, ge=60, le=86400)
    sendgrid_api_key: SecretStr | None = None
    sendgrid_api_host: str = "https://api.sendgrid.com"
    sendgrid_timeout: float = Field(10.0, gt=0, le=120)
    sendgrid_max_concurrency: int = Field(8, ge=1, le=64)
    smtp_url: SecretStr | None = None
    smtp_timeout: float = Field(10.0, gt=0, le=120)
    smtp_pool_size: int = Field(4, ge=1, le=64)
    smtp_starttls: Literal["auto", "require", "off"] = "auto"
    smtp_tls_verify: bool = True
    smtp_ca_file: str | None = None

    # Observability (README "Observability"). OpenTelemetry, read from the standard OTEL_*
    # variables: traces are on once an OTLP endpoint or OTEL_TRACES_EXPORTER is set (and the
    # `otel` extra is installed); OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn them off.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = None
    # OTel metrics mirroring the Prometheus ones: off unless OTEL_METRICS_EXPORTER=otlp or console.
    otel_metrics_exporter: Literal["otlp", "console", "none"] | None = None
    otel_exporter_otlp_endpoint: str | None = None  # the base URL; /v1/traces and /v1/metrics are added
    otel_exporter_otlp_traces_endpoint: str | None = None  # the full URL, when traces go elsewhere
    otel_exporter_otlp_metrics_endpoint: str | None = None
    otel_exporter_otlp_headers: SecretStr | None = None  # key=value,key2=value2 (an API key, often)
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"
    otel_service_name: str = "maxbooster-jobs"
    # Sentry: failed attempts and the worker's crashes are reported when SENTRY_DSN is set (and the
    # `sentry` extra is installed). Final failures only, unless SENTRY_REPORT_RETRIES.
    sentry_dsn: SecretStr | None = None
    sentry_environment: str | None = None
    sentry_release: str | None = None
    sentry_report_retries: bool = False

    # AI (OpenAI-compatible).
    ai_base_url: str | None = None
    ai_api_key: SecretStr | None = None
    ai_model: str | None = None
    ai_timeout: float = Field(60.0, gt=0, le=600)
    ai_max_concurrency: int = Field(4, ge=1, le=1000)  # in-flight requests per process
    ai_requests_per_minute: int = Field(60, ge=0, le=100_000)  # per process; 0 = no budget
    ai_cache_ttl: float = Field(7 * 86400.0, ge=0, le=30 * 86400)  # 0 = no caching
    ai_max_output_retries: int = Field(2, ge=0, le=10)  # re-asks after invalid model output

    # Analytics ingestion: events travel to Postgres in JSON chunks, through a Redis list while
    # Redis is up and a bounded in-process buffer while it is down.
    analytics_chunk_events: int = Field(500, ge=1, le=10_000)
    analytics_batch_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    analytics_flush_max_s: float = Field(5.0, gt=0, le=3600)
    analytics_flush_lease_s: float = Field(60.0, gt=0, le=86400)
    analytics_flush_trigger_events: int = Field(100_000, ge=1)
    analytics_buffer_max_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    analytics_buffer_full_timeout_s: float = Field(5.0, ge=0, le=3600)
    analytics_buffer_flush_interval_s: float = Field(1.0, gt=0, le=3600)
    analytics_close_timeout_s: float = Field(10.0, ge=0, le=3600)
    # Analytics validation, at the producer.
    analytics_max_events_per_call: int = Field(10_000, ge=1, le=1_000_000)
    analytics_max_event_age_s: float = Field(7 * 86400.0, gt=0)
    analytics_max_clock_skew_s: float = Field(300.0, ge=0, le=86400)
    analytics_max_properties_bytes: int = Field(2048, ge=2, le=64 * 1024)
    # Anomaly detection on daily totals (robust z-score: median and MAD, weekday-adjusted).
    analytics_anomaly_history_days: int = Field(28, ge=7, le=366)
    analytics_anomaly_min_history_days: int = Field(14, ge=7, le=366)
    analytics_anomaly_scan_days: int = Field(3, ge=1, le=60)
    analytics_anomaly_threshold: float = Field(4.0, gt=0, le=100)
    analytics_anomaly_min_change: float = Field(0.5, ge=0, le=100)
    analytics_anomaly_min_volume: int = Field(20, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value().strip()
        if raw:
            _check_url(raw, ("redis", "rediss"), "Redis")
            options = {name.lower() for name, _ in parse_qsl(urlsplit(raw).query)}
            if options & _TLS_URL_OPTIONS:
                raise ValueError(
                    f"TLS options in the URL ({', '.join(sorted(options & _TLS_URL_OPTIONS))}) are not "
                    "honoured; use REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE/KEY_FILE or REDIS_TLS_INSECURE"
                )
            db = urlsplit(raw).path.lstrip("/")
            if db and not db.isdigit():
                raise ValueError(f"database index {db!r} is not a number; use redis://host:6379/0")
        return SecretStr(raw)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value().strip()
        _check_url(raw, ("postgresql", "postgres"), "Postgres")
        return SecretStr(raw)

    @field_validator("database_schema")
    @classmethod
    def _schema_name(cls, v: str) -> str:
        v = v.strip()
        if not _SCHEMA_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a plain schema name")
        if v == "public" or v.startswith("pg_"):
            raise ValueError(f"{v!r} is the web app's or reserved; use a schema of the runner's own")
        return v

    @field_validator("log_level", "log_format", "worker_event_loop", mode="before")
    @classmethod
    def _any_case(cls, v: Any, info: ValidationInfo) -> Any:
        # LOG_LEVEL=info, LOG_FORMAT=JSON and WORKER_EVENT_LOOP=uvLoop are as good as INFO, json, uvloop.
        if not isinstance(v, str):
            return v
        return v.strip().upper() if info.field_name == "log_level" else v.strip().lower()

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        _check_url(v.get_secret_value().strip(), ("smtp", "smtps"), "SMTP")
        return v

    @field_validator("ai_base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        _check_url(v.strip(), ("http", "https"), "HTTP")
        url = v.strip().rstrip("/")
        if url.endswith("/chat/completions"):
            # A common mistake: the endpoint instead of the root the client appends it to.
            raise ValueError("give the API root, not the endpoint: drop the trailing /chat/completions")
        return url

    @field_validator(
        "otel_traces_exporter", "otel_metrics_exporter", "otel_exporter_otlp_protocol", mode="before"
    )
    @classmethod
    def _lower_or_unset(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return v.strip().lower() or None

    @field_validator(
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_traces_endpoint",
        "otel_exporter_otlp_metrics_endpoint",
    )
    @classmethod
    def _otlp_endpoint(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        _check_url(v.strip(), ("http", "https"), "OTLP")
        return v.strip().rstrip("/")

    @field_validator("otel_exporter_otlp_headers")
    @classmethod
    def _otlp_headers(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        parse_otlp_headers(v.get_secret_value())
        return SecretStr(v.get_secret_value().strip())

    @field_validator("sentry_dsn")
    @classmethod
    def _sentry_dsn(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        raw = v.get_secret_value().strip()
        _check_url(raw, ("https", "http"), "Sentry DSN")
        parts = urlsplit(raw)
        if not parts.username or not parts.path.rstrip("/").rpartition("/")[2].isdigit():
            raise ValueError(
                "is not a Sentry DSN (no public key before the host, or no project id at the end)"
            )
        return SecretStr(raw)

    @field_validator("sentry_environment", "sentry_release")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() if v is not None and v.strip() else None

    @field_validator("ai_api_key", "ai_model", "job_signing_keys")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        # AI_MODEL= or AI_API_KEY= in a .env file means "not set", as for the URLs above. Keys are
        # stripped: a secret mounted from a file often ends in a newline.
        if isinstance(v, SecretStr):
            raw = v.get_secret_value().strip()
            return SecretStr(raw) if raw else None
        return v.strip() if isinstance(v, str) and v.strip() else None

    @field_validator("job_signing_keys")
    @classmethod
    def _signing_keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        keys = [k.strip() for k in v.get_secret_value().split(",")]
        if any(len(k) < 32 for k in keys):
            raise ValueError(
                "every key must be at least 32 characters (a key shorter than that is guessable)"
            )
        return SecretStr(",".join(keys))

    @field_validator("worker_queues")
    @classmethod
    def _worker_queues(cls, v: str) -> str:
        entries = [e.strip() for e in v.split(",") if e.strip()]
        if not entries:
            raise ValueError("no queues given")
        weighted = [":" in e for e in entries]
        if any(weighted) and not all(weighted):
            raise ValueError("give every queue a weight (critical:6,default:3) or none (critical,default)")
        names = []
        for entry in entries:
            name, _, weight = entry.partition(":")
            _queue_name(name)
            if ":" in entry and not (weight.isdigit() and 1 <= int(weight) <= 1000):
                raise ValueError(f"the weight of {name!r} is {weight!r}; use a whole number from 1 to 1000")
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError("a queue is listed twice")
        return ",".join(entries)

    @field_validator("job_modules")
    @classmethod
    def _job_modules(cls, v: str) -> str:
        names = [e.strip() for e in v.split(",") if e.strip()]
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"{name!r} is not a module name (dotted Python names: myapp.jobs)")
        if len(set(names)) != len(names):
            raise ValueError("a module is listed twice")
        return ",".join(names)

    @field_validator("worker_queue_concurrency", "queue_global_concurrency")
    @classmethod
    def _caps(cls, v: str) -> str:
        for name, value in _pairs(v):
            _queue_name(name)
            if not (value.isdigit() and 1 <= int(value) <= 100_000):
                raise ValueError(
                    f"the cap of {name!r} is {value!r}; use a whole number of jobs from 1 to 100000"
                )
        return v.strip()

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits(cls, v: str) -> str:
        for name, value in _pairs(v):
            if not _LIMIT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a limit name; use letters, digits and _ (ai_requests)")
            _rate(name, value)
        return v.strip()

    @property
    def worker_queue_weights(self) -> dict[str, int | None]:
        """The queues this worker consumes, in the configured order, with weights (None: strict)."""
        out: dict[str, int | None] = {}
        for entry in self.worker_queues.split(","):
            name, _, weight = entry.partition(":")
            out[name] = int(weight) if weight else None
        return out

    @property
    def job_module_names(self) -> tuple[str, ...]:
        """The extra job modules (JOB_MODULES), in the order given."""
        return tuple(self.job_modules.split(",")) if self.job_modules else ()

    @property
    def queue_caps(self) -> dict[str, int]:
        return {name: int(value) for name, value in _pairs(self.worker_queue_concurrency)}

    @property
    def queue_global_caps(self) -> dict[str, int]:
        return {name: int(value) for name, value in _pairs(self.queue_global_concurrency)}

    @property
    def rate_limit_table(self) -> dict[str, tuple[int, float]]:
        """Each configured limit: (how many, per how many seconds)."""
        return {name: _rate(name, value) for name, value in _pairs(self.rate_limits)}

    @field_validator("email_allowed_from")
    @classmethod
    def _allowed_from(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        entries = [e.strip().lower() for e in v.split(",") if e.strip()]
        for entry in entries:
            domain = entry.rpartition("@")[2]
            if not domain or "." not in domain or any(c.isspace() for c in entry):
                raise ValueError(f"{entry!r} is neither a domain nor an address")
        return ",".join(entries)

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _existing_file(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not Path(v).is_file():
            raise ValueError(f"file {v!r} does not exist; give the path of a PEM file")
        return v

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, v: str) -> str:
        if not v.strip():
            return "https://maxbooster.ai"
        _check_url(v.strip(), ("https", "http"), "HTTP")
        return v.strip().rstrip("/")

    @field_validator("sendgrid_api_host")
    @classmethod
    def _sendgrid_host(cls, v: str) -> str:
        if not v.strip():
            return "https://api.sendgrid.com"
        _check_url(v.strip(), ("http", "https"), "HTTP")
        return v.strip().rstrip("/")

    @field_validator("sendgrid_api_key")
    @classmethod
    def _sendgrid_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        return SecretStr(v.get_secret_value().strip())

    @field_validator("api_tokens")
    @classmethod
    def _api_tokens(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        parse_api_tokens(v.get_secret_value())
        return SecretStr(v.get_secret_value().strip())

    @field_validator("dashboard_tokens")
    @classmethod
    def _dashboard_tokens(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        parse_dashboard_tokens(v.get_secret_value())
        return SecretStr(v.get_secret_value().strip())

    @field_validator("dashboard_session_secret")
    @classmethod
    def _session_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        if len(v.get_secret_value().strip()) < 32:
            raise ValueError("is shorter than 32 characters")
        return SecretStr(v.get_secret_value().strip())

    @field_validator("email_from")
    @classmethod
    def _email_from(cls, v: str) -> str:
        v = v.strip()
        # "Name <address>": the job code validates the name; here the address must be sound.
        address = v[v.rfind("<") + 1 : -1] if v.endswith(">") else v
        # Imported when EMAIL_FROM is set, not with the settings: its tables cost ~20 ms at start.
        import email_validator

        try:
            email_validator.validate_email(address, check_deliverability=False, allow_smtputf8=False)
        except email_validator.EmailNotValidError as exc:
            raise ValueError(f"not a valid sender: {exc}") from None
        return v

    @field_validator("smtp_ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not Path(v).is_file():
            raise ValueError("no such file; give the path of a PEM file of CA certificates")
        return v

    @model_validator(mode="after")
    def _transport_is_configured(self) -> Self:
        if self.email_transport == "sendgrid" and self.sendgrid_api_key is None:
            raise ValueError("EMAIL_TRANSPORT: 'sendgrid' needs SENDGRID_API_KEY; set it, or use auto")
        if self.email_transport == "smtp" and self.smtp_url is None:
            raise ValueError("EMAIL_TRANSPORT: 'smtp' needs SMTP_URL; set it, or use auto")
        if self.api_dev_no_auth and self.api_tokens is None and not self.api_host_is_loopback:
            raise ValueError(
                f"API_DEV_NO_AUTH: serving without auth is only allowed on a loopback address, not "
                f"API_HOST={self.api_host!r}; set API_TOKENS, or API_HOST=127.0.0.1"
            )
        return self

    @property
    def email_transport_resolved(self) -> Literal["sendgrid", "smtp", "file"]:
        """The transport `auto` stands for: sendgrid if keyed, else smtp if configured, else file."""
        if self.email_transport != "auto":
            return self.email_transport
        if self.sendgrid_api_key is not None:
            return "sendgrid"
        return "smtp" if self.smtp_url is not None else "file"

    def secret_values(self) -> list[str]:
        """Every secret value configured (keys, tokens, URL passwords), longest first, for
        scrubbing error messages: a provider may echo a key back."""
        found: list[str] = []
        for name in ("sendgrid_api_key", "ai_api_key"):
            value = getattr(self, name)
            if value is not None:
                found.append(value.get_secret_value())
        if self.job_signing_keys is not None:
            found += self.job_signing_keys.get_secret_value().split(",")
        if self.api_tokens is not None:
            found += [token for token, _ in parse_api_tokens(self.api_tokens.get_secret_value())]
        if self.dashboard_tokens is not None:
            found += [t for t, _, _ in parse_dashboard_tokens(self.dashboard_tokens.get_secret_value())]
        if self.dashboard_session_secret is not None:
            found.append(self.dashboard_session_secret.get_secret_value())
        for url in (self.redis_url, self.database_url, self.smtp_url):
            if url is not None:
                found += _url_secrets(url.get_secret_value())
        if self.otel_exporter_otlp_headers is not None:
            found += list(parse_otlp_headers(self.otel_exporter_otlp_headers.get_secret_value()).values())
        if self.sentry_dsn is not None:
            found.append(urlsplit(self.sentry_dsn.get_secret_value()).username or "")
        return sorted({f for f in found if len(f) >= 4}, key=len, reverse=True)

    @property
    def tracing_configured(self) -> bool:
        """OTEL_* asks for traces: an OTLP endpoint or a traces exporter set, and not disabled."""
        if self.otel_sdk_disabled or self.otel_traces_exporter == "none":
            return False
        return self.otel_traces_exporter is not None or bool(
            self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint
        )

    @property
    def otel_metrics_configured(self) -> bool:
        """OTEL_METRICS_EXPORTER asks for OTel metrics (off by default: Prometheus serves them)."""
        return not self.otel_sdk_disabled and self.otel_metrics_exporter in ("otlp", "console")

    def otlp_url(self, signal: Literal["traces", "metrics"]) -> str:
        """Where OTLP/HTTP sends `signal`: its own endpoint, else the base one plus /v1/<signal>,
        else a collector on this machine (the OTLP default)."""
        own = (
            self.otel_exporter_otlp_traces_endpoint
            if signal == "traces"
            else self.otel_exporter_otlp_metrics_endpoint
        )
        if own:
            return own
        return f"{self.otel_exporter_otlp_endpoint or 'http://localhost:4318'}/v1/{signal}"

    @property
    def otlp_headers(self) -> dict[str, str]:
        raw = self.otel_exporter_otlp_headers
        return parse_otlp_headers(raw.get_secret_value()) if raw is not None else {}

    @property
    def sentry_dsn_redacted(self) -> str:
        """The DSN with its key hidden, for logs and `doctor`."""
        if self.sentry_dsn is None:
            return "(not configured)"
        parts = urlsplit(self.sentry_dsn.get_secret_value())
        return f"{parts.scheme}://***@{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

    @property
    def signing_keys(self) -> list[bytes]:
        """The job-signing keys, the signing one first; empty when signing is off."""
        if self.job_signing_keys is None:
            return []
        return [key.encode() for key in self.job_signing_keys.get_secret_value().split(",")]

    @property
    def email_senders_allowed(self) -> tuple[str, ...]:
        """Domains and addresses a message may be sent from (EMAIL_ALLOWED_FROM, or EMAIL_FROM's domain)."""
        if self.email_allowed_from:
            return tuple(self.email_allowed_from.split(","))
        address = (
            self.email_from[self.email_from.rfind("<") + 1 : -1]
            if self.email_from.endswith(">")
            else self.email_from
        )
        return (address.rpartition("@")[2].lower(),)

    @property
    def api_host_is_loopback(self) -> bool:
        """API_HOST is reachable only from this machine (127.0.0.0/8, ::1 or localhost)."""
        host = self.api_host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_url.get_secret_value())

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url.get_secret_value()) if self.redis_enabled else "(not configured)"

    @property
    def database_url_redacted(self) -> str:
        return redact_url(self.database_url.get_secret_value())

    def __repr_args__(self) -> Any:
        # URLs are shown with the password masked, so a repr stays useful for debugging.
        for name, value in super().__repr_args__():
            if name in ("redis_url", "database_url", "smtp_url") and isinstance(value, SecretStr):
                yield name, redact_url(value.get_secret_value())
            else:
                yield name, value


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:
        # A check across variables; its message names them itself.
        return str(error["msg"]).removeprefix("Value error, ")
    field = str(error["loc"][0])
    env_name = field.upper()
    value = error.get("input")
    shown: Any
    if field in _SECRET_FIELDS:
        # A DSN's key sits where a URL's user does, which redact_url shows: hide it whole.
        readable = isinstance(value, str) and "://" in value and field != "sentry_dsn"
        shown = redact_url(str(value)) if readable else "<redacted>"
    else:
        shown = value
    message = str(error["msg"]).removeprefix("Value error, ")
    hint = _FIX_HINTS.get(field)
    fix = f"; {hint}" if hint and "; use" not in message else ""
    return f"{env_name}: {message} (got {shown!r}){fix}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, raising `SettingsError` with readable messages."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(dict(e)) for e in exc.errors(include_url=False)]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
