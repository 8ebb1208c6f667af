"""Exactly-once effect: an email key is delivered once, however often its job runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from core.context import Mode
from core.errors import JobFailed
from devservices.proxy import TcpProxy
from jobs.email.store import Claimant, DeliveryStore, SentMemo
from settings import Settings
from tests.conftest import pg_connect, pg_pool, running_producer
from tests.email_fixtures import SmtpSink, email_settings, smtp_sink

__all__ = ["email_settings", "smtp_sink"]  # fixtures used here

SettingsFactory = Callable[..., Settings]
MODES = pytest.mark.parametrize("mode", ["queued", "inline"])


def message(subject: str = "Your receipt") -> dict[str, Any]:
    return {"to": ["zoe@example.com"], "subject": subject, "text": "Thanks for your payment."}


def new_key() -> str:
    return f"receipt:{uuid.uuid4().hex}"


async def row(database_url: str, key: str) -> asyncpg.Record | None:
    conn = await pg_connect(database_url)
    try:
        return await conn.fetchrow("SELECT * FROM email_deliveries WHERE idempotency_key = $1", key)
    finally:
        await conn.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DeliveryStore]:
    pool = await pg_pool(database_url, min_size=1, max_size=2)
    try:
        yield DeliveryStore(pool, SentMemo(), lease_s=120)
    finally:
        await pool.close()


@MODES
async def test_a_second_run_with_the_same_key_sends_nothing(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory, database_url: str
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    key = new_key()
    async with running_producer(settings, mode) as producer:
        first = await producer.enqueue_job("send_email", {"message": message(), "idempotency_key": key})
        sent = await first.result(timeout=10)
        # A worker killed after sending leaves the job to run again: same key, another run.
        again = await producer.enqueue_job("send_email", {"message": message(), "idempotency_key": key})
        repeat = await again.result(timeout=10)

    assert len(smtp_sink.received) == 1
    assert sent["status"] == "sent"
    assert repeat["status"] == "already_sent"
    assert repeat["message_id"] == sent["message_id"]
    assert repeat["sent_by_job"] == first.job_id
    record = await row(database_url, key)
    assert record is not None
    assert record["state"] == "sent"
    assert record["provider_message_id"] == sent["message_id"]
    assert record["sent_at"] is not None


async def test_an_inline_run_and_a_queued_run_of_one_key_send_once(
    smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    key = new_key()
    args = {"message": message(), "idempotency_key": key}
    async with running_producer(settings, "queued") as queued, running_producer(settings, "inline") as inline:
        queued_handle = await queued.enqueue_job("send_email", args)
        inline_handle = await inline.enqueue_job("send_email", args, background=True)
        results = await asyncio.gather(queued_handle.result(timeout=10), inline_handle.result(timeout=10))
    statuses = sorted(r["status"] for r in results)
    # The second run finds it sent, or (inline, answered at once) still being sent by the first.
    assert statuses in (["already_sent", "sent"], ["in_progress_elsewhere", "sent"])
    assert len(smtp_sink.received) == 1


@MODES
async def test_concurrent_runs_of_one_key_send_once(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    args = {"message": message(), "idempotency_key": new_key()}
    async with running_producer(settings, mode) as producer:
        handles = [await producer.enqueue_job("send_email", args, background=True) for _ in range(4)]
        results = await asyncio.gather(*(h.result(timeout=10) for h in handles))
    statuses = sorted(r["status"] for r in results)
    if mode == "queued":  # a worker's run waits for the live claim, then sees the message sent
        assert statuses == ["already_sent"] * 3 + ["sent"]
    else:  # an inline caller is answered at once: the message is being sent by another run
        assert set(statuses) <= {"already_sent", "in_progress_elsewhere", "sent"}
        assert statuses.count("sent") == 1
    assert len(smtp_sink.received) == 1


@MODES
async def test_a_claim_left_by_a_crashed_run_is_free_once_its_lease_ends(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory, database_url: str, store: DeliveryStore
) -> None:
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url())
    key = new_key()
    await store.claim([key], Claimant("killed-worker-job", "queued", 1), "smtp")  # then the worker died

    async with running_producer(settings, mode) as producer:
        blocked = await producer.enqueue_job("send_email", {"message": message(), "idempotency_key": key})
        if mode == "inline":
            # A caller in a web request is answered at once, not made to wait out the lease.
            started = time.monotonic()
            answer = await blocked.result(timeout=10)
            assert time.monotonic() - started < 1.0
            assert answer["status"] == "in_progress_elsewhere"
            assert answer["job_id"] == "killed-worker-job"
        else:
            with pytest.raises(JobFailed) as failure:
                await blocked.result(timeout=10)
            assert failure.value.kind == "transient"
            assert "being sent by job killed-worker-job (queued)" in failure.value.message
        assert smtp_sink.received == []

        conn = await pg_connect(database_url)  # let the lease run out
        await conn.execute("UPDATE email_deliveries SET lease_until = now() WHERE idempotency_key = $1", key)
        await conn.close()
        handle = await producer.enqueue_job("send_email", {"message": message(), "idempotency_key": key})
        result = await handle.result(timeout=10)

    assert result["status"] == "sent"
    assert len(smtp_sink.received) == 1
    record = await row(database_url, key)
    assert record is not None
    assert record["attempts"] >= 2


async def test_claim_rules(store: DeliveryStore) -> None:
    key = new_key()
    first = await store.claim([key], Claimant("job-a", "queued", 1), "smtp")
    assert first.claimed == {key}
    # arq runs a later try only after the earlier one is over (or its worker died): take over.
    assert (await store.claim([key], Claimant("job-a", "queued", 2), "smtp")).claimed == {key}
    # Another job, or the same id run inline alongside, waits for the lease.
    held = await store.claim([key], Claimant("job-b", "queued", 5), "smtp")
    assert held.claimed == frozenset()
    assert held.others[key].job_id == "job-a"
    assert held.others[key].lease_left_s > 100
    assert (await store.claim([key], Claimant("job-a", "inline", 3), "smtp")).claimed == frozenset()

    # A transient failure frees the key for anyone.
    second = await store.claim([key], Claimant("job-a", "queued", 3), "smtp")
    await store.record_failed(second, {key: "SMTP answered 451"}, "transient")
    third = await store.claim([key], Claimant("job-b", "queued", 1), "smtp")
    assert third.claimed == {key}

    # A permanent refusal is not retried by the same job, but another job may try again.
    await store.record_failed(third, {key: "SMTP answered 550"}, "permanent")
    retry = await store.claim([key], Claimant("job-b", "queued", 2), "smtp")
    assert retry.claimed == frozenset()
    assert retry.others[key].state == "failed"
    fresh = await store.claim([key], Claimant("job-c", "inline", 1), "smtp")
    assert fresh.claimed == {key}

    # Once sent, nobody claims it again.
    assert await store.record_sent({key: "<id@example.com>"}, "smtp")
    for claimant in (Claimant("job-c", "inline", 2), Claimant("job-d", "queued", 1)):
        done = await store.claim([key], claimant, "smtp")
        assert done.claimed == frozenset()
        assert done.others[key].state == "sent"
        assert done.others[key].provider_message_id == "<id@example.com>"


@MODES
async def test_a_send_that_cannot_be_recorded_is_not_sent_again(
    mode: Mode, smtp_sink: SmtpSink, email_settings: SettingsFactory, database_url: str
) -> None:
    """Postgres goes away between the provider's acceptance and the record of it."""
    parts = database_url.split("@", 1)[1].split("/", 1)[0]
    host, port = parts.rsplit(":", 1) if ":" in parts else (parts, "5432")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxied = proxy.url_for(database_url)
    proxy_port = proxy.port

    async def database_goes_away() -> None:
        smtp_sink.on_message = None
        await proxy.stop()

    smtp_sink.on_message = database_goes_away
    settings = email_settings(email_transport="smtp", smtp_url=smtp_sink.url(), database_url=proxied)
    key = new_key()
    args = {"message": message(), "idempotency_key": key}
    try:
        async with running_producer(settings, mode) as producer:
            first = await (await producer.enqueue_job("send_email", args)).result(timeout=15)
            assert first["status"] == "sent"
            assert first["recorded"] is False

            # Still no database: the process remembers it sent this key.
            again = await (await producer.enqueue_job("send_email", args)).result(timeout=15)
            assert again["status"] == "already_sent"
            assert again["message_id"] == first["message_id"]

            proxy = TcpProxy(host, int(port), listen_port=proxy_port)
            await proxy.start()
            third = await (await producer.enqueue_job("send_email", args)).result(timeout=15)
            assert third["status"] == "already_sent"
    finally:
        await proxy.stop()

    assert len(smtp_sink.received) == 1
    record = await row(database_url, key)
    assert record is not None
    assert record["state"] == "sent"  # written once the database came back
    assert record["provider_message_id"] == first["message_id"]
