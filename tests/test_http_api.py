"""The HTTP API of `python -m worker serve`, over real HTTP on loopback, backed by real Redis and
Postgres and a worker: what a web app calling it sees."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from pydantic import SecretStr

from devservices.redis import RedisServer
from jobs import REGISTRY
from settings import Settings
from tests.conftest import eventually, make_settings, raw_redis, start_worker
from tests.http_fixtures import TOKEN, TOKEN_2, TOKEN_EVENTS, TOKEN_RECORD_ONLY, serving
from tests.sample_jobs import RUNS, TEST_REGISTRY
from worker.ops.schema import job_schemas

AUTH = {"authorization": f"Bearer {TOKEN}"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a service on the session's Redis, with a worker running its jobs."""
    worker = await start_worker(settings)
    try:
        async with serving(settings) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            yield client
    finally:
        await worker.stop()


async def _finished(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    report: dict[str, object] = {}

    async def done() -> bool:
        nonlocal report
        report = (await client.get(f"/v1/jobs/{job_id}")).json()
        return report["status"] in ("complete", "failed", "dead")

    await eventually(done, what=f"job {job_id} to finish")
    return report


async def test_queued_job_runs_and_its_status_says_so(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/jobs/record", json={"args": {"key": "q1"}})
    assert response.status_code == 202
    body = response.json()
    assert body == {"job_id": body["job_id"], "name": "record", "mode": "queued", "duplicate": False}
    report = await _finished(api, body["job_id"])
    assert report["status"] == "complete"
    assert report["result"] == {"key": "q1", "mode": "queued"}
    assert report["tries"] == 1
    assert RUNS == [("q1", "queued", 1)]


async def test_wait_returns_the_result_or_the_structured_error(api: httpx.AsyncClient) -> None:
    done = await api.post("/v1/jobs/record", json={"args": {"key": "w1"}, "wait": 5})
    assert done.status_code == 200
    assert done.json()["status"] == "complete"
    assert done.json()["result"] == {"key": "w1", "mode": "queued"}
    failed = await api.post("/v1/jobs/refuse", json={"args": {"reason": "no"}, "wait": True})
    assert failed.status_code == 200
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"] == {"type": "PermanentError", "message": "refused: no", "kind": "permanent"}
    report = await _finished(api, failed.json()["job_id"])
    assert report["status"] in ("failed", "dead")
    assert report["error"] == failed.json()["error"]


async def test_idempotency_key_is_the_job_id_and_a_second_call_is_a_duplicate(api: httpx.AsyncClient) -> None:
    headers = {"idempotency-key": "order-42:receipt"}
    first = await api.post("/v1/jobs/record", json={"args": {"key": "dup"}, "wait": 5}, headers=headers)
    second = await api.post("/v1/jobs/record", json={"args": {"key": "dup"}}, headers=headers)
    assert first.json()["job_id"] == second.json()["job_id"] == "order-42:receipt"
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    same_in_body = await api.post(
        "/v1/jobs/record", json={"args": {"key": "dup"}, "job_id": "order-42:receipt"}
    )
    assert same_in_body.json()["duplicate"] is True
    conflict = await api.post(
        "/v1/jobs/record", json={"args": {"key": "dup"}, "job_id": "other"}, headers=headers
    )
    assert conflict.status_code == 422
    assert conflict.json()["error"]["fields"][0]["field"] == "job_id"
    await asyncio.sleep(0.2)
    assert RUNS == [("dup", "queued", 1)]


@pytest.mark.parametrize(
    ("body", "field", "problem", "message"),
    [
        ({"args": {}}, "args.key", "is required", "record: argument 'key' is required"),
        (
            {"args": {"key": 5}},
            "args.key",
            "Input should be a valid string",
            "record: argument 'key': Input should be a valid string (got 5)",
        ),
        ({"args": {"key": "k", "x": 1}}, "args.x", "is not an argument of this job", "unknown argument 'x'"),
        ({"args": ["k"]}, "args", "is a JSON array, not an object", "args must be a JSON object"),
        ({"args": {"key": "k"}, "defer": 1}, "defer", "is not a field here", "defer is not a field here"),
        ({"args": {"key": "k"}, "job_id": "has space"}, "job_id", "printable ASCII", "job_id must be"),
        ({"args": {"key": "k"}, "defer_by": -1}, "defer_by", "from 0 to", "defer_by must be"),
    ],
)
async def test_invalid_requests_name_the_field_and_the_problem(
    api: httpx.AsyncClient,
    settings: Settings,
    body: dict[str, object],
    field: str,
    problem: str,
    message: str,
) -> None:
    response = await api.post("/v1/jobs/record", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert message in error["message"]
    [named] = [f for f in error["fields"] if f["field"] == field]
    assert problem in named["problem"]
    assert await raw_redis(settings).zcard(settings.queue_name) == 0
    assert RUNS == []


async def test_nested_arguments_are_validated_in_json_mode_with_the_jobs_own_model(
    settings: Settings,
) -> None:
    async with (
        serving(settings, registry=REGISTRY) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as c,
    ):
        bad_email = {"message": {"to": [{"email": "not-an-address"}], "subject": "s", "text": "t"}}
        refused = await c.post("/v1/jobs/send_email", json={"args": bad_email})
        assert refused.status_code == 422
        assert refused.json()["error"]["fields"][0]["field"] == "args.message.to.0.email"
        assert "send_email: argument 'message.to.0.email'" in refused.json()["error"]["message"]
        # A date arrives as an ISO string, as JSON carries it (strict Python mode would refuse it).
        checked = await c.post(
            "/v1/jobs/ai_week_narrative/validate",
            json={"args": {"artist_name": "Zoë", "week_start": "2026-11-23", "metrics": {"streams": 1.0}}},
        )
        assert checked.status_code == 422  # AI is not configured here: refused, and said why
        assert "AI_BASE_URL" in checked.json()["error"]["message"]
        valid = await c.post("/v1/jobs/ping/validate", json={"args": {"message": "hi"}})
        assert valid.json() == {"name": "ping", "args": {"message": "hi", "sleep": 0.0}}


async def test_unknown_job_and_unknown_route(api: httpx.AsyncClient) -> None:
    unknown = await api.post("/v1/jobs/nope", json={"args": {}})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_job"
    assert "registered jobs:" in unknown.json()["error"]["message"]
    assert (await api.get("/v2/anything")).json()["error"]["code"] == "not_found"
    assert (await api.delete("/v1/jobs")).status_code == 405


async def test_tokens_rotation_and_scopes(api: httpx.AsyncClient) -> None:
    body = {"args": {"key": "a"}}
    no_token = await api.post("/v1/jobs/record", json=body, headers={"authorization": ""})
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    wrong = await api.post(
        "/v1/jobs/record", json=body, headers={"authorization": "Bearer nope-nope-nope-nope"}
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == {"code": "unauthorized", "message": "the bearer token is not valid"}
    basic = await api.post("/v1/jobs/record", json=body, headers={"authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert (await api.get("/openapi.json", headers={"authorization": ""})).status_code == 401
    rotated = await api.post("/v1/jobs/record", json=body, headers={"authorization": f"Bearer {TOKEN_2}"})
    assert rotated.status_code == 202
    scoped = {"authorization": f"Bearer {TOKEN_RECORD_ONLY}"}
    assert (await api.post("/v1/jobs/record", json={"args": {"key": "b"}}, headers=scoped)).status_code == 202
    refused = await api.post("/v1/jobs/refuse", json={"args": {"reason": "x"}}, headers=scoped)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == (
        "this token may not use job 'refuse'; its scope is set in API_TOKENS"
    )
    assert (await api.post("/v1/events", json={"events": []}, headers=scoped)).status_code == 403
    events_only = {"authorization": f"Bearer {TOKEN_EVENTS}"}
    assert (await api.post("/v1/jobs/record", json=body, headers=events_only)).status_code == 403
    # Health probes need no token.
    assert (await api.get("/healthz", headers={"authorization": ""})).json() == {"status": "ok"}
    assert (await api.get("/readyz", headers={"authorization": ""})).json() == {
        "status": "ready",
        "redis": "up",
    }


async def test_a_body_over_the_limit_is_refused_with_413(settings: Settings) -> None:
    small = settings.model_copy(update={"api_max_body_bytes": 2048})
    async with serving(small) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        big = {"args": {"key": "x" * 5000}}
        response = await client.post("/v1/jobs/record", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"
        assert "API_MAX_BODY_BYTES" in response.json()["error"]["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: refused while streaming
            yield b'{"args": {"key": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}}'

        streamed = await client.post("/v1/jobs/record", content=chunked())
        assert streamed.status_code == 413
        # The connection is still good for the next call.
        assert (await client.post("/v1/jobs/record", json={"args": {"key": "ok"}})).status_code == 202
    assert RUNS == []


async def test_batch_enqueues_in_order_with_given_and_made_ids(api: httpx.AsyncClient) -> None:
    jobs = [{"args": {"key": "b0"}}, {"args": {"key": "b1"}, "job_id": "batch-b1"}, {"args": {"key": "b2"}}]
    response = await api.post(
        "/v1/jobs/record/batch", json={"jobs": jobs}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 202
    body = response.json()
    assert [j["mode"] for j in body["jobs"]] == ["queued"] * 3
    assert body["jobs"][1]["job_id"] == "batch-b1"
    assert body["counts"] == {"queued": 3, "duplicate": 0}
    again = await api.post("/v1/jobs/record/batch", json={"jobs": [jobs[1]]})
    assert again.json()["jobs"][0]["duplicate"] is True
    for job in body["jobs"]:
        await _finished(api, job["job_id"])
    assert Counter(key for key, _, _ in RUNS) == Counter({"b0": 1, "b1": 1, "b2": 1})


async def test_a_bad_job_refuses_the_whole_batch_naming_its_index(api: httpx.AsyncClient) -> None:
    jobs = [{"args": {"key": "ok"}}, {"args": {"key": 7}}]
    response = await api.post("/v1/jobs/record/batch", json={"jobs": jobs})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["fields"] == [{"field": "jobs[1].args.key", "problem": "Input should be a valid string"}]
    assert error["message"].startswith("jobs[1]: record: argument 'key'")
    too_many = await api.post("/v1/jobs/record/batch", json={"jobs": []})
    assert too_many.status_code == 422
    await asyncio.sleep(0.1)
    assert RUNS == []


async def test_events_are_accepted_or_refused_with_reasons(settings: Settings) -> None:
    async with (
        serving(settings, registry=REGISTRY) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as c,
    ):
        events = [
            {"type": "stream", "artist_id": "a1", "track_id": "t1", "source": "spotify"},
            {"type": "stream", "artist_id": "a1", "source": "spotify"},  # a stream needs a track
            {"type": "page_view", "artist_id": "a1", "source": "web", "event_id": "pv-1"},
        ]
        response = await c.post("/v1/events", json={"events": events})
        assert response.status_code == 200
        body = response.json()
        assert (body["accepted"], body["refused"], body["stored_in"]) == (2, 1, "redis")
        assert body["errors"][0]["index"] == 1
        assert "track_id" in body["errors"][0]["reason"]
        scoped = await c.post(
            "/v1/events", json={"events": events}, headers={"authorization": f"Bearer {TOKEN_EVENTS}"}
        )
        assert scoped.status_code == 200
        not_a_list = await c.post("/v1/events", json={"events": {"type": "stream"}})
        assert not_a_list.status_code == 422


async def test_redis_down_jobs_run_inline_in_the_service(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")})
    async with serving(down) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        waited = await client.post("/v1/jobs/record", json={"args": {"key": "i1"}, "wait": True})
        assert waited.status_code == 200
        assert waited.json()["mode"] == "inline"
        assert waited.json()["result"] == {"key": "i1", "mode": "inline"}
        # Without `wait` the job has still run when the answer comes (as the Python producer's
        # inline runs): an accepted job cannot be lost with the service process.
        ran = await client.post("/v1/jobs/record", json={"args": {"key": "i2"}})
        assert (ran.status_code, ran.json()["mode"]) == (202, "inline")
        assert ("i2", "inline", 1) in RUNS
        background = await client.post("/v1/jobs/record", json={"args": {"key": "i3"}, "background": True})
        assert background.json()["mode"] == "inline"
        report = await _finished(client, background.json()["job_id"])
        assert (report["status"], report["mode"]) == ("complete", "inline")
        rejected = await client.post("/v1/jobs/record_rejecting", json={"args": {"key": "r"}})
        assert rejected.status_code == 503
        assert rejected.json()["error"]["code"] == "enqueue_refused"
        assert (await client.get("/readyz")).json()["redis"] == "down"  # still ready: fallback serves
    assert sorted(RUNS) == [("i1", "inline", 1), ("i2", "inline", 1), ("i3", "inline", 1)]


async def test_redis_down_spool_policy_job_is_spooled_then_relayed_once(own_redis: RedisServer) -> None:
    settings = make_settings(own_redis.url)
    worker = await start_worker(settings)
    try:
        async with serving(settings) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            await asyncio.to_thread(own_redis.stop)
            response = await client.post("/v1/jobs/record_spooled", json={"args": {"key": "sp"}, "wait": 1})
            assert response.status_code == 202
            assert (response.json()["mode"], response.json()["status"]) == ("spooled", "pending")
            job_id = response.json()["job_id"]
            assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "spooled"
            assert RUNS == []
            await asyncio.to_thread(own_redis.restart)
            report = await _finished(client, job_id)
            assert (report["status"], report["tries"]) == ("complete", 1)
    finally:
        await worker.stop()
    assert RUNS == [("sp", "queued", 1)]


async def test_traceparent_header_continues_into_the_jobs_log_line(
    api: httpx.AsyncClient, log_output: io.StringIO
) -> None:
    traced = await api.post(
        "/v1/jobs/record", json={"args": {"key": "t"}}, headers={"traceparent": TRACEPARENT}
    )
    # An unparseable traceparent is ignored, as W3C Trace Context says: the job still runs.
    untraced = await api.post("/v1/jobs/record", json={"args": {"key": "u"}}, headers={"traceparent": "junk"})
    assert untraced.status_code == 202
    for response in (traced, untraced):
        await _finished(api, response.json()["job_id"])
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    finished = {line["job_id"]: line for line in lines if line["event"] == "job finished"}
    assert finished[traced.json()["job_id"]]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "trace_id" not in finished[untraced.json()["job_id"]]


async def test_deferred_job_waits_for_its_time(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/jobs/record", json={"args": {"key": "later"}, "defer_by": 0.5})
    job_id = response.json()["job_id"]
    assert (await api.get(f"/v1/jobs/{job_id}")).json()["status"] == "deferred"
    assert (await _finished(api, job_id))["status"] == "complete"


async def test_status_of_an_unknown_job_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/jobs/never-enqueued")
    assert response.status_code == 404
    assert response.json() == {"job_id": "never-enqueued", "status": "not_found"}


async def test_openapi_has_a_request_schema_per_job_and_the_job_list_is_the_schema_export(
    api: httpx.AsyncClient,
) -> None:
    document = (await api.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    for definition in TEST_REGISTRY:
        request = schemas[f"{definition.name}_enqueue"]
        assert request["properties"]["args"] == {"$ref": f"#/components/schemas/{definition.name}_args"}
        assert f"/v1/jobs/{definition.name}" in document["paths"]
    assert schemas["record_args"]["required"] == ["key"]
    assert schemas["record_args"]["additionalProperties"] is False
    assert document["paths"]["/healthz"]["get"]["security"] == []
    listed = (await api.get("/v1/jobs")).json()
    assert listed == orjson.loads(orjson.dumps(job_schemas(TEST_REGISTRY)))
    assert listed["jobs"]["record_spooled"]["fallback"] == "spool"
