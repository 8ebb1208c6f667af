"""A worker SIGKILLed at each point of sending one email: before it connects, during DATA, after
the server accepted the message, after the send was recorded. The message must reach the
server once; only a kill between acceptance and the record (the window the runner keeps as
narrow as it can) may cause a second copy."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from settings import Settings
from tests.conftest import eventually, make_settings, pg_connect
from worker.producer import Producer

ROOT = Path(__file__).resolve().parents[1]
# Makes recording a send slow for these keys only, so a kill can land inside the window.
_SLOW_RECORD = """
CREATE OR REPLACE FUNCTION test_slow_sent_record() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
CREATE TRIGGER test_slow_sent_record BEFORE UPDATE ON email_deliveries FOR EACH ROW
WHEN (NEW.state = 'sent' AND NEW.idempotency_key LIKE 'killwin-window-%')
EXECUTE FUNCTION test_slow_sent_record();
"""


class _Sink:
    """Counts the messages it accepted (sent 250 for); can hold a conversation at a stage."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []
        self.hold: str | None = None  # "ehlo" or "data": pause there, once
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.accepted_event = asyncio.Event()

    async def _pause(self, stage: str) -> None:
        if self.hold == stage:
            self.hold = None
            self.reached.set()
            await self.release.wait()

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        await self._pause("ehlo")
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        await self._pause("data")
        if server.transport is None or server.transport.is_closing():
            return "451 client gone"  # never acknowledged: not accepted
        self.accepted.append(envelope.original_content)
        self.accepted_event.set()
        return "250 2.0.0 Ok: queued"


@pytest.fixture
async def sink() -> AsyncIterator[tuple[_Sink, int]]:
    handler = _Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="localhost", loop=loop), "127.0.0.1", 0)
    yield handler, int(server.sockets[0].getsockname()[1])
    server.close()


async def _worker(settings: Settings, port: int) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "QUEUE_NAME": settings.queue_name,
        "SMTP_URL": f"smtp://127.0.0.1:{port}",
        "EMAIL_TRANSPORT": "smtp",
        "SMTP_STARTTLS": "off",
        "WORKER_HTTP_PORT": "0",
        "WORKER_LOCK_TIMEOUT": "3",
        "LOG_LEVEL": "WARNING",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _state(settings: Settings, key: str) -> str | None:
    conn = await pg_connect(settings.database_url.get_secret_value())
    try:
        state = await conn.fetchval("SELECT state FROM email_deliveries WHERE idempotency_key = $1", key)
        return str(state) if state is not None else None
    finally:
        await conn.close()


@pytest.mark.parametrize("point", ["before-connect", "during-data", "window", "after-record"])
async def test_a_worker_killed_anywhere_in_a_send_sends_one_copy_outside_the_window(
    point: str, redis_server: Any, database_url: str, sink: tuple[_Sink, int]
) -> None:
    handler, port = sink
    settings = make_settings(redis_server.url, database_url=database_url)
    key = f"killwin-{point}-{uuid.uuid4().hex[:8]}"
    conn = await pg_connect(database_url)
    if point == "window":
        await conn.execute(_SLOW_RECORD)
    handler.hold = {"before-connect": "ehlo", "during-data": "data"}.get(point)
    first = await _worker(settings, port)
    second = None
    try:
        async with Producer(settings) as producer:
            message = {"to": [{"email": "fan@example.com"}], "subject": "Hi", "text": "Hello"}
            handle = await producer.enqueue_job("send_email", {"message": message, "idempotency_key": key})
            if point in ("before-connect", "during-data"):
                await asyncio.wait_for(handler.reached.wait(), 20)
            elif point == "window":
                await asyncio.wait_for(handler.accepted_event.wait(), 20)
                await asyncio.sleep(0.5)  # inside the 3 s the record now takes
            else:
                await eventually(lambda: _is_sent(settings, key), timeout=20, what="the send was recorded")
            first.send_signal(signal.SIGKILL)
            await first.wait()
            handler.release.set()
            second = await _worker(settings, port)
            result = await handle.result(timeout=30)
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
        if point == "window":
            await conn.execute("DROP TRIGGER test_slow_sent_record ON email_deliveries")
        await conn.close()
    copies = len(handler.accepted)
    if point == "window":
        assert copies in (1, 2)  # the one window where a duplicate is excused
    else:
        assert copies == 1, (point, copies)
    assert result["status"] in ("sent", "already_sent")


async def _is_sent(settings: Settings, key: str) -> bool:
    return await _state(settings, key) == "sent"
