"""The one place that reads the environment (and an optional `.env` file).

Every other module receives a `Settings` instance. Invalid values fail at start with a
`SettingsError` that names the variable, shows the bad value (secrets redacted) and says how
to fix it. Secrets are `SecretStr` so neither `repr()` nor logs can show them.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings", "redact_url"]

_SECRET_FIELDS = {"redis_url", "database_url", "smtp_url", "sendgrid_api_key", "ai_api_key"}

# A fix hint per field, used when pydantic's own message is all we have.
_FIX_HINTS: dict[str, str] = {
    "redis_url": "use redis://[user:password@]host:port/db or rediss://...; empty disables Redis",
    "database_url": "use postgresql://user:password@host:port/dbname",
    "log_level": "use one of DEBUG, INFO, WARNING, ERROR",
    "log_format": "use json, console or auto",
    "email_transport": "use sendgrid, smtp, file or auto",
    "smtp_url": "use smtp://user:password@host:port or smtps://...",
    "worker_batch_size": "use 1 to 1000 jobs per claim and per outcome write (default 100)",
    "worker_idle_block": "use 0.05 to 3600 seconds; longer blocks cost an idle worker fewer commands",
    "worker_health_interval": "use 1 to 86400 seconds; the health key lives 10 s longer than this",
}


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    userinfo = f"{parts.username}:***" if parts.username else ":***"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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
        raise ValueError(f"the port is not a number; use {schemes[0]}://host:6379") from None


class SettingsError(ValueError):
    """Raised by `load_settings` with one readable line per bad variable."""


class Settings(BaseSettings):
    """Runtime configuration; field `foo_bar` is read from environment variable `FOO_BAR`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Redis and the fallback to inline execution.
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_connect_timeout: float = Field(0.25, gt=0, le=30)
    redis_socket_timeout: float = Field(0.25, gt=0, le=60)
    redis_probe_interval: float = Field(1.0, gt=0, le=300)
    worker_redis_socket_timeout: float = Field(5.0, gt=0, le=300)
    queue_name: str = Field("arq:queue", min_length=1)

    database_url: SecretStr = SecretStr("postgresql://postgres@localhost:5432/postgres")

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

    # Worker.
    worker_max_jobs: int = Field(100, ge=1, le=10000)
    # Most jobs one claim takes and one outcome write records; also the bulk-enqueue chunk.
    worker_batch_size: int = Field(100, ge=1, le=1000)
    # Seconds an idle worker blocks on its wake-up before sending the next block.
    worker_idle_block: float = Field(30.0, ge=0.05, le=3600)
    # Seconds between writes of the health key (arq's `<queue>:health-check`).
    worker_health_interval: float = Field(300.0, ge=1, le=86400)
    # Ignored since the worker waits on a wake-up instead of polling; kept so configs still load.
    worker_poll_delay: float = Field(0.05, gt=0, le=60)
    worker_shutdown_grace: float = Field(30.0, ge=0, le=3600)

    # Email.
    email_transport: Literal["sendgrid", "smtp", "file", "auto"] = "auto"
    email_from: str = "Max Booster <no-reply@maxbooster.local>"
    email_file_dir: str = "var/mail"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_api_host: str = "https://api.sendgrid.com"
    smtp_url: SecretStr | None = None
    smtp_timeout: float = Field(10.0, gt=0, le=120)

    # AI (OpenAI-compatible).
    ai_base_url: str | None = None
    ai_api_key: SecretStr | None = None
    ai_model: str | None = None
    ai_timeout: float = Field(60.0, gt=0, le=600)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value().strip()
        if raw:
            _check_url(raw, ("redis", "rediss"), "Redis")
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

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        _check_url(v.get_secret_value().strip(), ("smtp", "smtps"), "SMTP")
        return v

    @field_validator("ai_base_url", "sendgrid_api_host")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        _check_url(v.strip(), ("http", "https"), "HTTP")
        return v.strip().rstrip("/")

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
    field = str(error["loc"][0]) if error["loc"] else "?"
    env_name = field.upper()
    value = error.get("input")
    shown: Any
    if field in _SECRET_FIELDS:
        shown = redact_url(value) if isinstance(value, str) and "://" in value else "<redacted>"
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
