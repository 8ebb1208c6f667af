"""Nothing written to Redis can make a worker run code; secrets never reach logs, errors or reprs."""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path

import pytest
from arq.connections import RedisSettings, create_pool

from core.errors import JobFailed
from devservices.redis import RedisServer
from settings import Settings, SettingsError, load_settings, redact_url
from tests.conftest import make_settings, raw_redis, run_inline_job
from tests.sample_jobs import RUNS, TEST_REGISTRY, record
from worker.backend import keys
from worker.engine import WorkerService
from worker.producer import Producer


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


async def test_forged_pickle_payload_is_rejected_not_executed(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        redis = raw_redis(producer.settings)
        await redis.set(keys.job_key("forged-1"), pickle.dumps(_Exploit(marker)))
        await redis.zadd(settings.queue_name, {"forged-1": int(time.time() * 1000)})

        await WorkerService(settings, burst=True, registry=TEST_REGISTRY, handle_signals=False).run()

        assert not marker.exists()
        report = await producer.status("forged-1")
    assert report["status"] == "dead"  # failed for good, and dead-lettered
    assert report["error"]["type"] == "DeserializationError"
    assert RUNS == []


async def test_redis_password_never_appears_in_logs_errors_or_reprs(
    log_output: io.StringIO, database_url: str
) -> None:
    password = "s3cr3t-Pa55word"
    seen: list[str] = []
    with RedisServer(password=password) as server:
        settings = make_settings(server.url, database_url=database_url)
        assert password in settings.redis_url.get_secret_value()
        seen += [repr(settings), str(settings), settings.redis_url_redacted]
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            queued = await producer.enqueue(record, key="a")
            server.kill()  # connection errors are logged with the URL
            inline = await producer.enqueue(record, key="b")
            seen += [repr(queued), repr(inline)]
        wrong = make_settings(server.url.replace(password, "wrong-" + password), database_url=database_url)
        async with Producer(wrong, registry=TEST_REGISTRY) as producer:
            seen.append(repr(producer.backend.state))
    try:
        load_settings(redis_url=f"http://user:{password}@host:1/0")
    except SettingsError as exc:
        seen.append(str(exc))
    else:
        raise AssertionError("an http:// REDIS_URL must be refused")

    seen.append(log_output.getvalue())
    assert "redis unavailable" in seen[-1]
    assert "***" in seen[-2]
    for text in seen:
        assert password not in text


def test_a_password_with_url_characters_is_never_printed_when_settings_fail() -> None:
    password = "p/a#s?w@rd"
    for variable, url in (
        ("redis_url", f"redis://user:{password}@host:notaport/0"),
        ("database_url", f"postgresql://user:{password}@host:notaport/db"),
        ("smtp_url", f"smtp://user:{password}@host:notaport"),
    ):
        with pytest.raises(SettingsError) as error:
            load_settings(**{variable: url})
        assert password not in str(error.value)
        assert "user:***@" in str(error.value)
    assert redact_url(f"redis://h:6379/0?password={password}&db=1") == "redis://h:6379/0?password=***&db=1"


def test_tls_options_in_redis_url_cannot_turn_verification_off() -> None:
    with pytest.raises(
        SettingsError, match=r"TLS options in the URL \(ssl_cert_reqs\) are not honoured"
    ) as error:
        load_settings(redis_url="rediss://host:6380/0?ssl_cert_reqs=none")
    assert "REDIS_TLS_INSECURE" in str(error.value)


def test_keys_mounted_from_files_lose_their_trailing_newline() -> None:
    settings = load_settings(ai_api_key="sk-abc123\n", sendgrid_api_key=" SG.x.y\n", _env_file=None)
    assert settings.ai_api_key is not None
    assert settings.ai_api_key.get_secret_value() == "sk-abc123"
    assert settings.sendgrid_api_key is not None
    assert settings.sendgrid_api_key.get_secret_value() == "SG.x.y"


async def test_a_password_given_as_a_query_option_is_not_logged(
    redis_server: RedisServer, log_output: io.StringIO
) -> None:
    settings = make_settings(f"redis://127.0.0.1:{redis_server.port}/0?password=hunter2-query-secret")
    async with Producer(settings, registry=TEST_REGISTRY):
        pass
    # The server has no password, so Redis refuses the AUTH: logged, with the URL, never the secret.
    logged = log_output.getvalue()
    assert "Redis refused this client" in logged
    assert "password=***" in logged
    assert "hunter2-query-secret" not in logged


def test_tracebacks_in_logs_carry_no_local_variables(log_output: io.StringIO) -> None:
    import structlog

    def fails(recipient: str) -> None:
        raise ValueError("boom")

    try:
        fails("private-recipient@example.com")
    except ValueError:
        structlog.get_logger("test").exception("it failed")
    assert "boom" in log_output.getvalue()
    assert "private-recipient@example.com" not in log_output.getvalue()


async def test_a_wrong_redis_password_is_a_configuration_error(
    database_url: str, log_output: io.StringIO
) -> None:
    with RedisServer(password="right-password") as server:
        wrong = make_settings(
            server.url.replace("right-password", "wrong-password"), database_url=database_url
        )
        # The worker refuses to run and says what to fix.
        assert await WorkerService(wrong, registry=TEST_REGISTRY, handle_signals=False).run() == 2
        # The producer says so loudly, and jobs still run (inline).
        async with Producer(wrong, registry=TEST_REGISTRY) as producer:
            handle = await producer.enqueue(record, key="still-runs")
            assert handle.mode == "inline"
            assert producer.last_refusal is not None
    errors = [line for line in log_output.getvalue().splitlines() if '"level":"error"' in line]
    assert any("refuses this worker" in line and "REDIS_URL" in line for line in errors)
    assert any("refuses this producer" in line for line in errors)
    assert "wrong-password" not in log_output.getvalue()


async def test_a_job_from_a_plain_arq_producer_fails_saying_why_and_how_to_separate_queues(
    settings: Settings,
) -> None:
    # arq's own producer on the runner's queue: it pickles the job, as arq does by default.
    arq_pool = await create_pool(RedisSettings.from_dsn(settings.redis_url.get_secret_value()))
    try:
        await arq_pool.enqueue_job("record", key="from-arq", _job_id="arq-1", _queue_name=settings.queue_name)
    finally:
        await arq_pool.aclose()
    await WorkerService(settings, burst=True, registry=TEST_REGISTRY, handle_signals=False).run()
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        report = await producer.status("arq-1")
    assert RUNS == []  # never run
    assert report["status"] == "dead"
    message = report["error"]["message"]
    assert "a plain arq producer" in message
    assert "not unpickled" in message
    assert (
        f"separate the queues (this one is '{settings.queue_name}', arq's default is 'arq:queue')" in message
    )
    assert "QUEUE_NAME" in message
    assert "default_queue_name" in message


async def test_a_url_password_in_a_jobs_error_is_never_logged_or_stored(
    settings: Settings, log_output: io.StringIO
) -> None:
    reason = "could not reach https://user:hunter2-in-url@api.example.com/v1"
    with pytest.raises(JobFailed) as failure:
        await run_inline_job(
            settings, TEST_REGISTRY, "refuse", job_id="url-secret", kwargs={"reason": reason}
        )
    assert "https://user:***@api.example.com/v1" in failure.value.message
    assert "hunter2-in-url" not in log_output.getvalue()
