"""A full run in production mode: every log line is one JSON object and no secret ever appears."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import redis

from devservices.redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "redis": "redis-Secret-4411",
    "database": "pg-Secret-4412",
    "sendgrid": "SG.sendgridSecret4413.sendgridSecret4413",
    "smtp": "smtp-Secret-4414",
    "ai": "sk-ai-Secret-4415",
}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_full_run_logs_json_only_and_never_a_secret(database_url: str) -> None:
    with RedisServer(password=SECRETS["redis"]) as redis_server:
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": database_url.replace("postgres@", f"postgres:{SECRETS['database']}@"),
            "SENDGRID_API_KEY": SECRETS["sendgrid"],
            "EMAIL_TRANSPORT": "file",
            "SMTP_URL": f"smtp://mailer:{SECRETS['smtp']}@127.0.0.1:1",
            "AI_API_KEY": SECRETS["ai"],
            "AI_BASE_URL": "http://127.0.0.1:1/v1",
            "AI_MODEL": "m",
            "QUEUE_NAME": f"hygiene:{uuid.uuid4().hex[:6]}",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "DEBUG",
            "WORKER_HTTP_PORT": "0",
            "REDIS_PROBE_INTERVAL": "0.1",
        }
        outputs: list[str] = []
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for i in range(3):
                result = _run(env, "enqueue", "ping", "--args", f'{{"message": "m{i}"}}', "--wait", "10")
                outputs += [result.stdout, result.stderr]
            bad = _run(env, "enqueue", "ping", "--args", '{"message": 1}')
            outputs += [bad.stdout, bad.stderr]
            # A payload that is not ours: arq logs a traceback, which must come out structured.
            raw = redis.Redis.from_url(redis_server.url)
            raw.set("arq:job:forged", b"\x80not-json")
            raw.zadd(env["QUEUE_NAME"], {"forged": int(time.time() * 1000)})
            raw.zadd(env["QUEUE_NAME"] + ":wake", {"w": 0})  # what our enqueue does to wake a worker
            raw.close()
            time.sleep(0.5)
            redis_server.kill()
            time.sleep(0.5)
            down = _run(env, "enqueue", "ping", "--args", '{"message": "inline"}')
            outputs += [down.stdout, down.stderr]
            redis_server.restart()
            time.sleep(1.0)
            for args in (["doctor"], ["stats"], ["status", "nope"], ["jobs"]):
                result = _run(env, *args)
                outputs += [result.stdout, result.stderr]
            bad_config = _run({**env, "REDIS_URL": f"http://user:{SECRETS['redis']}@host/0"}, "jobs")
            outputs += [bad_config.stdout, bad_config.stderr]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker_out, worker_err = worker.communicate(timeout=30)
        outputs += [worker_out, worker_err]

    everything = "\n".join(outputs)
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"
    assert "redis unavailable" in worker_err
    assert "redis connected" in worker_err

    log_lines = [line for line in worker_err.splitlines() + down.stderr.splitlines() if line.strip()]
    events = [orjson.loads(line) for line in log_lines]  # raises if any line is not one JSON object
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    assert any(e["event"] == "job finished" and e["mode"] == "inline" for e in events)
    assert "ping: argument 'message'" in bad.stderr  # bad input is refused, not logged as a crash
    forged = [e for e in events if e.get("job_id") == "forged"]
    assert [(e["event"], e["error_type"]) for e in forged] == [("job finished", "DeserializationError")]
    tracebacks = [e for e in events if "exception" in e]
    assert all(isinstance(e["exception"], list) and e["exception"][0]["exc_type"] for e in tracebacks)
