"""Nothing lost: the spool, durable jobs, crash recovery, the outbox and dead letters."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from core.errors import EnqueueError, JobFailed
from devservices.proxy import TcpProxy
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import RunningWorker, eventually, make_settings, pg_connect, raw_redis, start_worker
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.ledger import SpoolRelay
from worker.ops.deadletters import retry_dead
from worker.producer import Producer
from worker.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


async def _spool_count(database_url: str, queue: str) -> int:
    conn = await pg_connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM job_spool WHERE queue = $1", queue))
    finally:
        await conn.close()


async def test_spooled_jobs_are_delivered_once_when_redis_returns(own_redis: RedisServer) -> None:
    settings = make_settings(own_redis.url)
    worker = await start_worker(settings)
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            await asyncio.to_thread(own_redis.stop)
            handles = [await producer.enqueue_job("record_spooled", {"key": f"s{i}"}) for i in range(49)]
            traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            handles.append(await producer.enqueue_job("record_spooled", {"key": "s49"}, traceparent=traced))
            deferred = await producer.enqueue_job("record", {"key": "deferred"}, defer_by=2.0)
            spooled_at = time.monotonic()
            assert {h.mode for h in handles} | {deferred.mode} == {"spooled"}
            assert await _spool_count(settings.database_url.get_secret_value(), settings.queue_name) == 51
            assert (await producer.status(handles[0].job_id))["status"] == "spooled"
            assert RUNS == []

            await asyncio.to_thread(own_redis.restart)
            results = [await h.result(timeout=20) for h in handles]
            assert (await deferred.result(timeout=20))["key"] == "deferred"
            ran_after = time.monotonic() - spooled_at
    finally:
        await worker.stop()
    assert [r["key"] for r in results] == [f"s{i}" for i in range(50)]
    # The relayed job kept the trace of the request that spooled it.
    assert (
        orjson.loads(await raw_redis(settings).get(f"arq:result:{handles[-1].job_id}") or b"{}")["tp"]
        == traced
    )
    assert Counter(key for key, _, _ in RUNS) == Counter({f"s{i}": 1 for i in range(50)} | {"deferred": 1})
    assert ran_after >= 2.0  # the deferred job did not run before its time
    assert await _spool_count(settings.database_url.get_secret_value(), settings.queue_name) == 0


async def test_spool_policy_with_postgres_down_too(settings: Settings) -> None:
    both_down = settings.model_copy(
        update={
            "redis_url": SecretStr("redis://127.0.0.1:1/0"),
            "database_url": SecretStr("postgresql://postgres@127.0.0.1:1/x"),
        }
    )
    async with Producer(both_down, registry=TEST_REGISTRY) as producer:
        with pytest.raises(EnqueueError, match="Postgres is unreachable; this job does not run inline"):
            await producer.enqueue_job("record_spooled", {"key": "refused"})
        with pytest.raises(EnqueueError, match="this job does not run inline"):
            await producer.enqueue_job("record_rejecting", {"key": "refused"})
        inline = await producer.enqueue_job("record", {"key": "still-runs"})
        assert inline.mode == "inline"
    assert [key for key, _, _ in RUNS] == ["still-runs"]


async def test_durable_jobs_survive_a_redis_restart_without_persistence(own_redis: RedisServer) -> None:
    settings = make_settings(own_redis.url, durable_check_interval=0.5)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handles = [await producer.enqueue_job("record_durable", {"key": f"d{i}"}) for i in range(30)]
        plain = await producer.enqueue_job("record", {"key": "not-durable"})
        assert {h.mode for h in handles} == {"queued"}
        # No worker yet: the jobs wait in Redis, which loses them (a restart without persistence).
        await raw_redis(producer.settings).flushall()
        assert await raw_redis(producer.settings).zcard(settings.queue_name) == 0

        worker = await start_worker(settings)
        try:
            results = [await h.result(timeout=20) for h in handles]
        finally:
            await worker.stop()
        assert (await producer.status(plain.job_id))["status"] == "not_found"  # what durability is for
    assert sorted(r["key"] for r in results) == sorted(f"d{i}" for i in range(30))
    assert Counter(key for key, _, _ in RUNS) == Counter({f"d{i}": 1 for i in range(30)})
    conn = await pg_connect(settings.database_url.get_secret_value())
    try:
        left = await conn.fetchval("SELECT count(*) FROM durable_jobs WHERE job_id = ANY($1::text[])",
                                   [h.job_id for h in handles])  # fmt: skip
    finally:
        await conn.close()
    assert left == 0  # completed durable jobs are no longer recorded


async def test_transactional_enqueue_commits_or_vanishes(settings: Settings, worker: RunningWorker) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        conn = await asyncpg.connect(settings.database_url.get_secret_value())
        try:
            async with conn.transaction():
                committed = await producer.enqueue_in_transaction(conn, "record", {"key": "committed"})
            transaction = conn.transaction()
            await transaction.start()
            rolled_back = await producer.enqueue_in_transaction(conn, "record", {"key": "rolled-back"})
            await transaction.rollback()  # the request failed after enqueueing
            with pytest.raises(EnqueueError, match="needs a connection inside"):
                await producer.enqueue_in_transaction(conn, "record", {"key": "no-transaction"})
        finally:
            await conn.close()
        assert (await committed.result(timeout=10))["key"] == "committed"
        await asyncio.sleep(0.5)
        assert (await producer.status(rolled_back.job_id))["status"] == "not_found"
    assert [key for key, _, _ in RUNS] == ["committed"]


async def test_two_relays_deliver_each_spooled_job_once(settings: Settings) -> None:
    queue = settings.queue_name
    ids = [f"relay-{uuid.uuid4().hex[:6]}-{i}" for i in range(400)]
    runtimes = [Runtime.build(settings, TEST_REGISTRY, role=role) for role in ("relay-a", "relay-b")]
    try:
        for job_id in ids:
            await runtimes[0].ledger.spool(
                None, job_id=job_id, name="record", kwargs={"key": job_id}, queue=queue
            )
        for runtime in runtimes:
            await runtime.backend.start()
        relays = [SpoolRelay(runtime.ledger, runtime.backend) for runtime in runtimes]
        await asyncio.gather(*(relay.relay_once() for relay in relays))
        delivered = [relay.delivered for relay in relays]
        queued = await raw_redis(settings).zcard(queue)
    finally:
        for runtime in runtimes:
            await runtime.aclose()
    assert sum(delivered) == 400  # every row left the spool exactly once
    assert queued == 400


async def test_dead_letters_keep_failures_and_retry_runs_them_again(
    settings: Settings, worker: RunningWorker
) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        refused = await producer.enqueue_job("refuse", {"reason": "bad data"})
        exhausted = await producer.enqueue_job("flaky", {"key": "always", "failures": 100})
        for handle in (refused, exhausted):
            with pytest.raises(JobFailed):
                await handle.result(timeout=10)
        down = settings.model_copy(update={"redis_url": SecretStr("")})
        async with Producer(down, registry=TEST_REGISTRY) as inline_producer:
            inline = await inline_producer.enqueue_job("refuse", {"reason": "inline too"})
        ledger = producer.ledger

        shown = await ledger.dead_letter_of(refused.job_id)
        assert shown is not None
        assert shown.error == {
            "type": "PermanentError",
            "message": "refused: bad data",
            "kind": "permanent",
        }
        assert (shown.name, shown.mode, shown.tries, shown.kwargs) == (
            "refuse",
            "queued",
            1,
            {"reason": "bad data"},
        )
        exhausted_row = await ledger.dead_letter_of(exhausted.job_id)
        assert exhausted_row is not None
        assert (exhausted_row.tries, exhausted_row.error["kind"]) == (4, "transient")
        assert (await producer.status(inline.job_id))["status"] == "dead"
        assert (await producer.status(refused.job_id))["status"] == "dead"

        env = {**os.environ, "DATABASE_URL": settings.database_url.get_secret_value(), "REDIS_URL": ""}
        listed = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "worker", "dead", "list"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert refused.job_id in listed.stdout
        assert inline.job_id in listed.stdout

        runs_before = len(RUNS)
        retried = await retry_dead(producer, [refused.job_id])
        assert len(retried) == 1
        # It runs again (and fails again: still bad data).
        await eventually(lambda: len(RUNS) == runs_before + 1, what="the retried job ran")
        assert await ledger.purge_dead_letters() >= 2


async def test_status_everywhere(settings: Settings, worker: RunningWorker) -> None:
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        done = await producer.enqueue_job("record", {"key": "done"})
        await done.result(timeout=5)
        assert (await producer.status(done.job_id))["status"] == "complete"
        later = await producer.enqueue_job("record", {"key": "later"}, defer_by=60)
        assert (await producer.status(later.job_id))["status"] == "deferred"
        running = await producer.enqueue_job("sleepy_long", {"seconds": 1.0})
        await eventually(lambda: any(t for t in worker.service.worker.tasks.values() if not t.done()))
        assert (await producer.status(running.job_id))["status"] == "in_progress"
    down = settings.model_copy(update={"redis_url": SecretStr("")})
    async with Producer(down, registry=TEST_REGISTRY) as producer:
        inline = await producer.enqueue_job("record", {"key": "inline"})
        await producer.ledger.drain()
        report = await producer.status(inline.job_id)
    assert (report["status"], report["mode"], report["result"]) == (
        "complete",
        "inline",
        {"key": "inline", "mode": "inline"},
    )


async def test_sigkilled_workers_jobs_run_again_within_their_lock_timeout(own_redis: RedisServer) -> None:
    lock_s = 3.0  # WORKER_LOCK_TIMEOUT: a dead worker's jobs become claimable again after this
    settings = make_settings(own_redis.url)
    env = {
        **os.environ,
        "REDIS_URL": own_redis.url,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "QUEUE_NAME": settings.queue_name,
        "LOG_LEVEL": "WARNING",
        "WORKER_HTTP_PORT": "0",
        "WORKER_MAX_JOBS": "40",
        "WORKER_LOCK_TIMEOUT": str(lock_s),
    }

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "tests.run_worker"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    workers = [spawn(), spawn()]
    kills: list[float] = []
    try:
        async with Producer(settings, registry=TEST_REGISTRY) as producer:
            # Two tries each: before, a job a kill interrupted twice was dead-lettered.
            handles = [await producer.enqueue_job("sleepy_marked", {"seconds": 0.1}) for _ in range(2000)]
            for _ in range(3):  # kill one worker mid-stream, three times, replacing it each time
                await asyncio.sleep(1.0)
                victim = workers.pop(0)
                victim.send_signal(signal.SIGKILL)
                kills.append(time.time())
                victim.wait()
                workers.append(spawn())
            results = [await h.result(timeout=60) for h in handles]
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    assert len(results) == 2000  # every job completed, none dead-lettered by the kills
    assert {r["job_try"] for r in results} == {1}  # an interrupted run is not one of its tries
    rerun = [r["started"] for r in results if r["start"] > 1]
    assert rerun, "no job was caught mid-run by a kill"
    # Each re-run started after some kill; the gap from the latest kill before it is the recovery time.
    gaps = [min(started - k for k in kills if k <= started) for started in rerun]
    # Within the lock's lifetime, plus the claim of a busy worker behind the backlog's older jobs.
    assert max(gaps) < lock_s + 2.0, gaps
    print(f"\nkill-to-rerun: {len(rerun)} jobs re-run; gap max {max(gaps):.1f}s, min {min(gaps):.1f}s")


async def test_unmigrated_database_is_reported_with_the_fix(
    settings: Settings, fresh_database: str, log_output: io.StringIO
) -> None:
    """Inline jobs still run; each outcome not recorded gets a line that says what to do."""
    no_tables = SecretStr(fresh_database)
    empty = settings.model_copy(update={"redis_url": SecretStr(""), "database_url": no_tables})
    async with Producer(empty, registry=TEST_REGISTRY) as producer:
        handles = [await producer.enqueue_job("record", {"key": f"k{i}"}) for i in range(5)]
        await producer.ledger.drain()
    assert [h.mode for h in handles] == ["inline"] * 5
    assert [(f"k{i}", "inline", 1) for i in range(5)] == RUNS
    lines = [line for line in log_output.getvalue().splitlines() if "could not record" in line]
    assert len(lines) == 5, lines  # one per outcome not written, none silent
    assert all("no runner tables" in line and "python -m worker migrate" in line for line in lines)


async def _durable_rows(settings: Settings, job_id: str) -> int:
    conn = await pg_connect(settings.database_url.get_secret_value())
    try:
        return int(await conn.fetchval("SELECT count(*) FROM durable_jobs WHERE job_id = $1", job_id))
    finally:
        await conn.close()


async def test_a_durable_job_whose_enqueue_reply_was_lost_runs_exactly_once(
    redis_server: RedisServer, settings: Settings
) -> None:
    """The enqueue lands in Redis but its reply is lost: the job runs inline, the producer withdraws
    the queued copy when Redis answers again, and the worker's reconciler must not queue it anew."""
    checks = settings.model_copy(update={"durable_check_interval": 0.3})
    async with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        proxied = checks.model_copy(update={"redis_url": SecretStr(proxy.url_for(redis_server.url))})
        async with Producer(proxied, registry=TEST_REGISTRY) as producer:
            await producer.enqueue_job("record", {"key": "warm-up"})  # scripts loaded: no NOSCRIPT below
            proxy.blackhole_after(b"EVALSHA")
            handle = await producer.enqueue_job("record_durable", {"key": "once"}, job_id="durable-once")
            assert handle.mode == "inline"
            assert (await handle.result(timeout=5))["mode"] == "inline"
            proxy.restore()
            await eventually(lambda: producer.backend.usable, what="the producer sees Redis again")
            await producer.ledger.drain()
            worker = await start_worker(checks)
            try:
                # Several reconciler rounds, each old enough to look at the record.
                await asyncio.sleep(2.0)
            finally:
                await worker.stop()
    assert [(key, mode) for key, mode, _ in RUNS if key == "once"] == [("once", "inline")]
    assert await _durable_rows(settings, "durable-once") == 0  # settled by the inline run


async def test_a_job_that_kills_its_worker_is_stopped_by_the_interruption_budget(
    own_redis: RedisServer,
) -> None:
    settings = make_settings(own_redis.url, worker_max_interruptions=1)
    env = {
        **os.environ,
        "REDIS_URL": own_redis.url,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "QUEUE_NAME": settings.queue_name,
        "LOG_LEVEL": "WARNING",
        "WORKER_HTTP_PORT": "0",
        "WORKER_LOCK_TIMEOUT": "3",
        "WORKER_MAX_INTERRUPTIONS": "1",
    }
    started = 0
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        handle = await producer.enqueue_job("kills_its_worker", {})
        deadline = time.monotonic() + 30
        while (await producer.status(handle.job_id))["status"] != "dead":
            assert time.monotonic() < deadline, "the poison job was never stopped"
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.run_worker", cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            started += 1
            try:
                await asyncio.wait_for(worker.wait(), 8)  # it dies under the job, or idles once it is dead
            except TimeoutError:
                worker.terminate()
                await worker.wait()
        status = await producer.status(handle.job_id)
    assert "WORKER_MAX_INTERRUPTIONS=1 ran out" in status["error"]["message"]
    assert started <= 4  # two runs that killed their worker, then the refusal
