"""Settings: bad values fail at start, naming the variable, the value and the fix."""

from __future__ import annotations

import pytest

from settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"REDIS_URL": "http://localhost:6379"},
            "REDIS_URL: scheme 'http' is not supported; use redis:// or rediss:// (got 'http://localhost:6379')",
        ),
        ({"REDIS_URL": "redis://localhost:6379/x"}, "REDIS_URL: database index 'x' is not a number"),
        ({"REDIS_URL": "redis://:6379/0"}, "REDIS_URL: no host in the Redis URL"),
        (
            {"DATABASE_URL": "mysql://db/x"},
            "DATABASE_URL: scheme 'mysql' is not supported; use postgresql://",
        ),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: Input should be 'json', 'console' or 'auto' (got 'xml')"),
        ({"JOB_TIMEOUT": "soon"}, "JOB_TIMEOUT: Input should be a valid number"),
        ({"JOB_MAX_TRIES": "0"}, "JOB_MAX_TRIES: Input should be greater than or equal to 1 (got '0')"),
        ({"REDIS_CONNECT_TIMEOUT": "-1"}, "REDIS_CONNECT_TIMEOUT: Input should be greater than 0"),
        (
            {"WORKER_BATCH_SIZE": "5000"},
            "WORKER_BATCH_SIZE: Input should be less than or equal to 1000 (got '5000'); use 1 to 1000",
        ),
        ({"WORKER_IDLE_BLOCK": "0"}, "WORKER_IDLE_BLOCK: Input should be greater than or equal to 0.05"),
        ({"WORKER_HEALTH_INTERVAL": "often"}, "WORKER_HEALTH_INTERVAL: Input should be a valid number"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        (
            {"DATABASE_SCHEMA": "public"},
            "DATABASE_SCHEMA: 'public' is the web app's or reserved; use a schema of the runner's own",
        ),
        ({"DATABASE_SCHEMA": "Job-Runner"}, "DATABASE_SCHEMA: 'Job-Runner' is not a plain schema name"),
        ({"APP_URL": "maxbooster.ai"}, "APP_URL: scheme '(none)' is not supported; use https:// or http://"),
    ],
)
def test_invalid_values_name_variable_value_and_fix(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings(_env_file=None)
    assert expected in str(error.value)


def test_redis_url_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://worker:pw@cache.example.com:6380/3")
    settings = load_settings(_env_file=None)
    assert settings.redis_enabled
    assert settings.redis_url_redacted == "rediss://worker:***@cache.example.com:6380/3"
    monkeypatch.setenv("REDIS_URL", "")
    assert not load_settings(_env_file=None).redis_enabled


def test_secrets_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter3@localhost/db")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.hunter4")
    settings = load_settings(_env_file=None)
    text = repr(settings) + str(settings)
    for secret in ("hunter2", "hunter3", "hunter4"):
        assert secret not in text
    assert "redis://:***@localhost:6379/0" in text


def test_dotenv_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    env_file = Path(str(tmp_path)) / ".env"
    env_file.write_text("WORKER_MAX_JOBS=7\n")
    monkeypatch.delenv("WORKER_MAX_JOBS", raising=False)
    assert load_settings(_env_file=str(env_file)).worker_max_jobs == 7


def test_log_level_and_format_in_either_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "info")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    settings = load_settings(_env_file=None)
    assert (settings.log_level, settings.log_format) == ("INFO", "json")
    assert load_settings(_env_file=None, log_level="Warning", log_format="Console").log_level == "WARNING"


def test_the_default_database_is_the_runners_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = load_settings(_env_file=None)
    assert settings.database_url.get_secret_value().endswith("/maxbooster_jobs")
    assert settings.database_schema == "jobrunner"
