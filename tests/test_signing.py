"""Signed job records: with JOB_SIGNING_KEYS set, only records and results a key signed are
trusted; a forged job is dead-lettered unrun and a forged result is never returned."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from core.codec import encode_job, sign
from core.errors import JobFailed, JobValidationError
from settings import Settings
from tests.conftest import eventually, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.backend import keys, make_cache
from worker.producer import Producer

KEY_A = "a" * 40
KEY_B = "b" * 40


def _signed(settings: Settings, *keys_: str, accept_unsigned: bool = False) -> Settings:
    return settings.model_copy(
        update={
            "job_signing_keys": SecretStr(",".join(keys_)),
            "job_signing_accept_unsigned": accept_unsigned,
        }
    )


async def _forge(settings: Settings, job_id: str, record: bytes) -> None:
    redis = raw_redis(settings)
    await redis.set(keys.job_key(job_id), record)
    await redis.zadd(settings.queue_name, {job_id: int(time.time() * 1000)})
    await redis.zadd(keys.wake_key(settings.queue_name), {"w": 0})  # as an enqueue would


async def test_only_records_a_key_signed_run(settings: Settings) -> None:
    signed = _signed(settings, KEY_A)
    forged = encode_job("record", {"key": "forged"}, enqueue_ms=1)
    worker = await start_worker(signed)
    try:
        async with Producer(signed, registry=TEST_REGISTRY) as producer:
            handle = await producer.enqueue_job("record", {"key": "signed"})
            assert (await handle.result(timeout=5))["key"] == "signed"
            stored = await raw_redis(settings).get(keys.result_key(handle.job_id))
            assert stored is not None
            assert b'"sg":"' in stored  # results are signed too
            await _forge(settings, "unsigned", forged)
            await _forge(settings, "wrong-key", sign(forged, "wrong-key", b"z" * 40))
            await _forge(settings, "other-id", sign(forged, "some-other-id", KEY_A.encode()))
            await eventually(lambda: _dead(producer, 3), what="three refused records")
            letters = await producer.ledger.dead_letters(job_ids=["unsigned", "wrong-key", "other-id"])
    finally:
        await worker.stop()
    assert {d.error["type"] for d in letters} == {"SignatureError"}
    assert [key for key, _, _ in RUNS] == ["signed"]  # none of the forged jobs ran


async def _dead(producer: Producer, count: int) -> bool:
    letters = await producer.ledger.dead_letters(job_ids=["unsigned", "wrong-key", "other-id"])
    return len(letters) >= count


async def test_keys_rotate_and_unsigned_jobs_drain_in_a_migration_window(settings: Settings) -> None:
    # Mid-rotation: this producer still signs with A (and trusts B), the worker signs with B.
    worker = await start_worker(_signed(settings, KEY_B, KEY_A, accept_unsigned=True))
    try:
        async with Producer(_signed(settings, KEY_A, KEY_B), registry=TEST_REGISTRY) as old_key:
            assert (await (await old_key.enqueue_job("record", {"key": "a"})).result(timeout=5))["key"] == "a"
        await _forge(settings, "before-signing", encode_job("record", {"key": "unsigned"}, enqueue_ms=1))
        await eventually(lambda: ("unsigned", "queued", 1) in RUNS, what="an unsigned job ran in the window")
    finally:
        await worker.stop()


async def test_a_forged_result_is_never_returned(settings: Settings) -> None:
    signed = _signed(settings, KEY_A)
    async with Producer(signed, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("record", {"key": "k"}, defer_by=60)
        forged = b'{"t": 1, "f": "record", "a": [], "k": {}, "et": 1, "s": true, "r": {"key": "forged"}}'
        await raw_redis(settings).set(keys.result_key(handle.job_id), forged)
        with pytest.raises(JobFailed) as failure:
            await handle.result(timeout=5)
        status = await producer.status(handle.job_id)
    assert failure.value.error_type == "UnverifiedResult"
    assert status["status"] == "failed"
    assert "not trusted" in status["problem"]
    assert "result" not in status


async def test_forged_cache_entries_are_misses(settings: Settings) -> None:
    signed = _signed(settings, KEY_A)
    cache = make_cache(signed)
    try:
        await cache.set("ai:x", b"real", 60)
        assert await cache.get("ai:x") == b"real"
        await raw_redis(settings).set(keys.cache_key("ai:forged"), b"\x00" * 32 + b"forged answer")
        assert await cache.get("ai:forged") is None
    finally:
        await cache.aclose()


async def test_senders_are_limited_to_the_allowed_domains(settings: Settings) -> None:
    message = {
        "to": [{"email": "fan@example.com"}],
        "subject": "Hi",
        "text": "Hello",
        "from_address": {"email": "ceo@elsewhere.example"},
    }
    async with Producer(settings) as producer:
        with pytest.raises(
            JobValidationError, match=r"from_address 'ceo@elsewhere\.example' is not an allowed sender"
        ):
            await producer.enqueue_job("send_email", {"message": message}, job_id="not-allowed")
        own = {**message, "from_address": {"email": "news@maxbooster.example"}}
        assert (await producer.enqueue_job("send_email", {"message": own}, defer_by=60)).mode == "queued"
    allowed = settings.model_copy(update={"email_allowed_from": "elsewhere.example"})
    async with Producer(allowed) as producer:
        assert (await producer.enqueue_job("send_email", {"message": message}, defer_by=60)).mode == "queued"
