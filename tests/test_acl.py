"""The README's least-privilege Redis users are enough for the producer and the worker, and no more."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import redis

from core.errors import JobFailed
from devservices.redis import RedisServer
from tests.conftest import make_settings, start_worker
from tests.sample_jobs import TEST_REGISTRY
from worker.ops.stats import collect_stats
from worker.producer import Producer

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_rules() -> dict[str, str]:
    block = re.search(r"<!-- acl-rules -->\n```\n(.*?)```\n<!-- /acl-rules -->", README.read_text(), re.S)
    assert block, "the README lost its ACL block"
    rules = {}
    for line in block.group(1).strip().splitlines():
        _, user, rest = line.split(" ", 2)
        rules[user] = rest.replace(f">CHANGE-ME-{user.removeprefix('mb-')}", f">pw-{user}")
    return rules


async def test_producer_and_worker_work_under_the_readme_acl_and_nothing_more() -> None:
    with RedisServer() as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        for user, rule in _readme_rules().items():
            admin.execute_command("ACL", "SETUSER", user, *rule.split())  # type: ignore[no-untyped-call]
        admin.close()
        queue = f"arq:queue:acl-{uuid.uuid4().hex[:6]}"
        producer_settings = make_settings(
            f"redis://mb-producer:pw-mb-producer@127.0.0.1:{server.port}/0", queue_name=queue
        )
        worker_settings = make_settings(
            f"redis://mb-worker:pw-mb-worker@127.0.0.1:{server.port}/0", queue_name=queue
        )

        worker = await start_worker(worker_settings)
        try:
            async with Producer(producer_settings, registry=TEST_REGISTRY) as producer:
                assert producer.backend.usable
                ok = await producer.enqueue_job("record", {"key": "acl"}, job_id="acl-1")
                assert ok.mode == "queued"
                assert (await ok.result(timeout=10))["key"] == "acl"
                assert (await producer.enqueue_job("record", {"key": "again"}, job_id="acl-1")).duplicate
                retried = await producer.enqueue_job("flaky", {"key": "acl-flaky", "failures": 1})
                assert (await retried.result(timeout=10))["tries"] == 2
                failing = await producer.enqueue_job("refuse", {"reason": "acl"})
                with pytest.raises(JobFailed):
                    await failing.result(timeout=10)
                later = await producer.enqueue_job("record", {"key": "later"}, defer_by=30)
                assert (await producer.status(later.job_id))["status"] == "deferred"
                assert (await producer.status("acl-1"))["status"] == "complete"
                stats = await collect_stats(producer.backend, queue)
                assert stats["deferred"] == 1
        finally:
            await worker.stop()

        as_producer = redis.Redis(
            host="127.0.0.1", port=server.port, username="mb-producer", password="pw-mb-producer"
        )
        try:
            for command in (
                ("FLUSHALL",),
                ("CONFIG", "SET", "maxmemory", "1"),
                ("GET", "other:key"),
                ("KEYS", "*"),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    as_producer.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            as_producer.close()
