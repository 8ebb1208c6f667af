"""A worker, a producer and the command line load a job family's heavy dependencies only when
that family first works (issue 18): each path runs for real in a fresh interpreter, which then
reports which of those libraries it holds. Timings and RSS are in the bench, not here."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson

from devservices.redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
# What only a family's first job (or the HTTP service, or configured observability) needs.
HEAVY = (
    "sendgrid",
    "httpx",
    "jinja2",
    "opentelemetry",
    "sentry_sdk",
    "starlette",
    "uvicorn",
    "devservices",
    "email_validator",
)

# Runs the CLI's `main` with the given arguments, then prints the heavy modules now loaded.
PROBE = """
import sys
from worker.ops.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
# redis-py imports PyJWT, which the command line defers (worker.ops.deferred): its stand-in is
# in sys.modules, its submodules (and cryptography's X.509) are not.
heavy += [m for m in ("jwt.api_jwt", "cryptography.x509") if m in sys.modules]
sys.stderr.flush()
print(JSON.dumps({"code": code, "heavy": heavy}).decode())
"""


def _probe(redis_url: str, database_url: str, *args: str) -> dict[str, object]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "QUEUE_NAME": f"light:{uuid.uuid4().hex[:8]}",
        "WORKER_HTTP_PORT": "0",
        "LOG_FORMAT": "json",
    }
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "SENTRY_DSN", "JOB_MODULES"):
        env.pop(name, None)
    code = f"import orjson as JSON\nHEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    return report


def _printed(code: str) -> list[str]:
    """The words a fresh interpreter running `code` printed (it must succeed)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_help_loads_no_family_dependency(redis_server: RedisServer, database_url: str) -> None:
    assert _probe(redis_server.url, database_url, "--help") == {"code": 0, "heavy": []}


def test_enqueue_loads_no_family_dependency(redis_server: RedisServer, database_url: str) -> None:
    report = _probe(redis_server.url, database_url, "enqueue", "ping", "--args", '{"message": "hi"}')
    assert report == {"code": 0, "heavy": []}


def test_a_worker_that_ran_loads_no_family_dependency(redis_server: RedisServer, database_url: str) -> None:
    # Started, found its queues empty and stopped: everything the run path imports at start.
    report = _probe(redis_server.url, database_url, "run", "--burst")
    assert report == {"code": 0, "heavy": []}


def test_a_deferred_module_is_the_real_one_at_first_use() -> None:
    """PyJWT, deferred by the command line: a job module of one's own that uses it gets it."""
    code = (
        "import sys\n"
        "from worker.ops import deferred\n"
        "deferred.defer()\n"
        "import redis.asyncio, jwt\n"
        "before = 'jwt.api_jwt' in sys.modules\n"
        "from jwt import decode\n"
        "token = jwt.encode({'user': 'ada'}, 'k' * 32, algorithm='HS256')\n"
        "import jwt.exceptions\n"
        "print(before, decode(token, 'k' * 32, algorithms=['HS256'])['user'],"
        " type(sys.modules['jwt']).__name__, jwt.exceptions.PyJWTError is jwt.PyJWTError)\n"
    )
    assert _printed(code) == ["False", "ada", "module", "True"]


def test_a_deferred_packages_submodule_imported_first_is_loaded_once() -> None:
    """`import jwt.exceptions` before anything else of PyJWT: one module, the one PyJWT raises."""
    code = (
        "import sys\n"
        "from worker.ops import deferred\n"
        "deferred.defer()\n"
        "import jwt.exceptions\n"
        "first = jwt.exceptions\n"
        "try:\n"
        "    jwt.decode('not a token', 'k' * 32, algorithms=['HS256'])\n"
        "except jwt.exceptions.InvalidTokenError as exc:\n"
        "    caught = type(exc).__name__\n"
        "print(caught, first is sys.modules['jwt.exceptions'] is jwt.exceptions)\n"
    )
    assert _printed(code) == ["DecodeError", "True"]


def test_a_family_loads_its_dependency_when_it_first_works() -> None:
    code = (
        "import sys\n"
        "from jobs.email.templates import render_template\n"
        "before = 'jinja2' in sys.modules\n"
        "render_template('welcome', {'name': 'Ada'})\n"
        "print(before, 'jinja2' in sys.modules)\n"
    )
    assert _printed(code) == ["False", "True"]
