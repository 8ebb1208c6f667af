"""The TypeScript client (`clients/typescript/`): its own tests run under Node's test runner
against real services started here (real Redis, real Postgres, a worker), and its generated job
types must match the registry."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from devservices._process import pick_port
from devservices.node import CLIENT_DIR, ensure_client_built
from devservices.redis import RedisServer
from jobs import REGISTRY
from settings import Settings
from tests.conftest import make_settings, start_worker
from tests.http_fixtures import TOKEN, TOKEN_RECORD_ONLY, serving
from tests.sample_jobs import RUNS
from worker.ops.cli import main as cli_main
from worker.ops.schema import job_schemas
from worker.ops.typescript import typescript_types

GENERATED = CLIENT_DIR / "src" / "jobs.generated.ts"
NODE_TESTS = ["build-test/test/client.test.js", "build-test/test/outbox.test.js", "test/cjs.test.cjs"]


def test_the_committed_typescript_types_match_the_registry() -> None:
    expected = typescript_types(job_schemas(REGISTRY))
    assert GENERATED.read_text() == expected, (
        "clients/typescript/src/jobs.generated.ts is stale; regenerate it with\n"
        "  python -m worker jobs --typescript > clients/typescript/src/jobs.generated.ts"
    )


def test_the_schema_export_is_what_the_cli_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["jobs", "--schema"]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert printed == orjson.loads(orjson.dumps(job_schemas(REGISTRY)))
    assert printed["jobs"]["send_email"]["args"] == {"$ref": "#/$defs/send_email_args"}
    assert set(printed["jobs"]) == set(REGISTRY.names())
    assert cli_main(["jobs", "--typescript"]) == 0
    assert capsys.readouterr().out == GENERATED.read_text()


@pytest.mark.timeout(240)  # the first run installs the client's dev dependencies (npm ci)
async def test_typescript_client_against_the_real_service(
    settings: Settings, redis_server: RedisServer, database_url: str, log_output: io.StringIO
) -> None:
    tools = await asyncio.to_thread(ensure_client_built)
    run = uuid.uuid4().hex[:8]
    no_redis = settings.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{pick_port()}/0")})
    real = make_settings(redis_server.url, database_url=database_url)
    worker = await start_worker(settings)
    try:
        async with (
            serving(settings) as api,
            serving(no_redis) as api_no_redis,
            serving(real, registry=REGISTRY) as api_real,
        ):
            env = {
                **tools.env,
                "MB_API_URL": api,
                "MB_API_URL_NO_REDIS": api_no_redis,
                "MB_API_URL_REAL": api_real,
                "MB_API_URL_DOWN": f"http://127.0.0.1:{pick_port()}",
                "MB_TOKEN": TOKEN,
                "MB_TOKEN_RECORD_ONLY": TOKEN_RECORD_ONLY,
                "MB_DATABASE_URL": database_url,
                "MB_QUEUE": settings.queue_name,
                "MB_RUN": run,
            }
            proc = await asyncio.create_subprocess_exec(
                tools.node, "--test", *NODE_TESTS, cwd=CLIENT_DIR, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(proc.communicate(), 180)
    finally:
        await worker.stop()
    report = output.decode(errors="replace")
    _save(report)
    assert proc.returncode == 0, f"node --test failed (node {tools.version}):\n{report[-8000:]}"
    # Every job the TypeScript tests enqueued ran once: retries, duplicates and repeated outbox
    # writes never made a second run.
    ran = Counter(k for k, _, _ in RUNS if k.startswith(f"ts-{run}-"))
    assert len(ran) >= 15
    assert {count for count in ran.values()} == {1}, ran
    # The traceparent given to the client reached the job's log line.
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    traced = [
        line for line in lines if line.get("job_id") == f"ts-traced-{run}" and line["event"] == "job finished"
    ]
    assert [line.get("trace_id") for line in traced] == ["4bf92f3577b34da6a3ce929d0e0e4736"]


def _save(report: str) -> None:
    """Keep the node test runner's report beside the client, for a look after a failure."""
    path = Path(os.environ.get("MB_NODE_REPORT", CLIENT_DIR / "build-test" / "node-test-report.txt"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
