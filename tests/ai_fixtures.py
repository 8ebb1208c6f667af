"""Shared fixtures for the AI tests: a scripted OpenAI-compatible server and both producer modes.

`FakeAI` is a real HTTP server on loopback (http.server in a thread) implementing
`POST /v1/chat/completions`. A test queues the replies it wants, in order; every request is
recorded with its headers, body and arrival time. Import the fixtures into a test module with
`from tests.ai_fixtures import ai_settings, fake_ai, mode`.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from core.context import Mode
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import make_settings

__all__ = [
    "AI_KEY",
    "FakeAI",
    "Reply",
    "Request",
    "ai_settings",
    "captions_json",
    "completion",
    "fake_ai",
    "log_events",
    "make_ai_settings",
    "mode",
]

AI_KEY = "sk-test-0123456789-SECRET"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # a dict or list is sent as JSON, str/bytes as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]
    at: float

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", []))


def completion(
    content: str | dict[str, Any] | None,
    *,
    prompt_tokens: int = 120,
    completion_tokens: int = 30,
    model: str = "fake-model-2024",
    finish_reason: str = "stop",
) -> Reply:
    """A 200 chat completion whose message content is `content` (a dict is sent as JSON text)."""
    text = orjson.dumps(content).decode() if isinstance(content, dict) else content
    return Reply(
        body={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def captions_json(networks: tuple[str, ...] = ("instagram", "x")) -> dict[str, Any]:
    """A valid reply for ai_social_captions with these networks."""
    return {
        "captions": [
            {"network": n, "text": f"New single out now on {n}!", "hashtags": ["#newmusic", "indie"]}
            for n in networks
        ]
    }


class FakeAI:
    """An OpenAI-compatible chat completions endpoint, answering from a script."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default: Reply | None = None  # used when the script is empty
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (and each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="fake-ai", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def start(self) -> FakeAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on a slow reply
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.script:
                return self.script.popleft()
        return self.default or Reply(500, {"error": {"message": "the test scripted no reply"}})

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
                    return
                body = orjson.loads(raw) if raw else {}
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = Request(self.path, headers, body, time.monotonic())
                reply = fake._next(request)
                try:
                    if reply.delay and fake._stopping.wait(reply.delay):
                        return
                    self._send(reply)
                except OSError:
                    pass  # the client gave up (a timeout test); nothing to answer
                finally:
                    fake._done()

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, dict | list):
                    payload = orjson.dumps(reply.body)
                    ctype = "application/json"
                else:
                    raw = reply.body or b""
                    payload = raw.encode() if isinstance(raw, str) else raw
                    ctype = "text/plain"
                self.send_response(reply.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def log_events(stream: io.StringIO, event: str = "job finished") -> list[dict[str, Any]]:
    """The JSON log lines with this event, from conftest's `log_output` stream."""
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def make_ai_settings(redis_url: str, fake: FakeAI, **overrides: Any) -> Settings:
    """Test settings pointing at `fake`. A fresh model name per call keeps cache keys apart
    between tests, since queued mode caches in the session's shared Redis."""
    values: dict[str, Any] = {
        "ai_base_url": fake.url,
        "ai_model": f"fake-{uuid.uuid4().hex[:8]}",
        "ai_api_key": AI_KEY,
        "ai_timeout": 2.0,
        "ai_requests_per_minute": 0,
        "ai_max_output_retries": 2,
    }
    values.update(overrides)
    return make_settings(redis_url, **values)


@pytest.fixture
def fake_ai() -> Iterator[FakeAI]:
    with FakeAI() as server:
        yield server


@pytest.fixture
def ai_settings(redis_server: RedisServer, fake_ai: FakeAI) -> Settings:
    return make_ai_settings(redis_server.url, fake_ai)


@pytest.fixture(params=["queued", "inline"])
def mode(request: pytest.FixtureRequest) -> Mode:
    value: Mode = request.param
    return value
