"""Email throughput on loopback: SMTP with and without connection reuse, SendGrid, the full job.

    python -m bench.bench_email [--messages 300] [--runs 5]

Servers run in a thread with their own event loop (aiosmtpd) or threads (the SendGrid
stand-in), so the client's loop measures the client. Scenarios run interleaved, one round at
a time, so they share the machine's state; each reports the median, min and max of its runs
in messages per second. Results go to bench/results/email.json and a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from bench.database import scratch_database
from jobs.email.addresses import Mailbox
from jobs.email.mime import Outgoing, make_message_id
from jobs.email.templates import render_template
from jobs.email.transports import SendGridTransport, SmtpTransport, Transport
from jobs.email.transports.smtp import SmtpConfig
from settings import Settings, load_settings
from tests.email_fixtures import FakeSendGrid, SmtpSink, make_tls_files
from worker.producer import Producer
from worker.telemetry import configure_logging

T = TypeVar("T")
RESULTS = Path(__file__).parent / "results" / "email.json"
CONCURRENCY = 4


class LoopThread:
    """An event loop in a daemon thread, for the servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def _message(n: int) -> Outgoing:
    rendered = render_template(
        "password_reset",
        {
            "firstName": "Zoë Müller",
            "resetLink": f"https://app.maxbooster.example/reset/{n}",
            "expiresIn": "30 minutes",
        },
    )
    sender = Mailbox(email="no-reply@maxbooster.example", name="Max Booster")
    key = f"bench-{uuid.uuid4().hex}"
    return Outgoing(
        sender=sender,
        to=(Mailbox(email=f"fan{n}@example.com", name="Zoë Müller"),),
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        reply_to=None,
        categories=("bench",),
        idempotency_key=key,
        message_id=make_message_id(key, sender),
    )


async def _send_all(send: Callable[[int], Awaitable[object]], count: int) -> float:
    """Seconds to send `count` messages with CONCURRENCY senders."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with slots:
            await send(n)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return time.perf_counter() - started


@dataclass
class Scenario:
    name: str
    run: Callable[[int], Awaitable[float]]
    rates: list[float] = field(default_factory=list)
    note: str = ""


def _transport_scenario(name: str, make: Callable[[], Transport], note: str = "") -> Scenario:
    async def run(count: int) -> float:
        transport = make()
        messages = [_message(n) for n in range(count)]
        try:
            return await _send_all(lambda n: transport.send(messages[n]), count)
        finally:
            await transport.aclose()

    return Scenario(name, run, note=note)


def _smtp(url: str, *, reuse: bool, ca_file: str | None = None) -> Callable[[], Transport]:
    settings = load_settings(_env_file=None, smtp_url=url, smtp_ca_file=ca_file)
    return lambda: SmtpTransport(SmtpConfig.from_settings(settings), CONCURRENCY, reuse=reuse)


def _job_scenario(settings: Settings) -> Scenario:
    async def run(count: int) -> float:
        message = {
            "to": ["Zoë Müller <zoe@example.com>"],
            "template": "password_reset",
            "context": {
                "firstName": "Zoë",
                "resetLink": "https://app.maxbooster.example/r",
                "expiresIn": "30 minutes",
            },
        }
        async with Producer(settings) as producer:

            async def send(n: int) -> object:
                handle = await producer.enqueue_job("send_email", {"message": message})
                return await handle.result(timeout=30)

            return await _send_all(send, count)

    return Scenario(
        "send_email job, inline (claim + SMTP reuse + record)",
        run,
        note="the whole job: validation, Postgres claim, SMTP, Postgres record",
    )


def _table(scenarios: list[Scenario], count: int, runs: int) -> str:
    lines = [
        "## Email delivery",
        "",
        f"Email throughput in messages/s: {count} messages per run, {runs} runs, "
        f"{CONCURRENCY} concurrent senders",
        "",
        "| scenario | median | min | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in scenarios:
        lines.append(
            f"| {s.name} | {statistics.median(s.rates):.0f} | {min(s.rates):.0f} | {max(s.rates):.0f} |"
        )
    return "\n".join(lines)


async def main(count: int, runs: int) -> None:
    # Before the scratch database, whose migrations log: stdout is the report.
    configure_logging(load_settings().model_copy(update={"log_level": "WARNING"}))
    async with scratch_database() as job_dsn:
        await _measure(job_dsn, count, runs)


async def _measure(job_dsn: str, count: int, runs: int) -> None:
    servers = LoopThread()
    scratch = Path(tempfile.mkdtemp(prefix="bench-email-"))
    tls = make_tls_files(scratch)
    plain = servers.run(SmtpSink().start())
    starttls = servers.run(SmtpSink(tls=tls, users={"bench": "pw"}, auth_required=True).start())
    sendgrid = FakeSendGrid().start()
    base = load_settings()
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's per-session chatter
    scenarios = [
        _transport_scenario("SMTP, pooled connections (reuse)", _smtp(plain.url(), reuse=True)),
        _transport_scenario("SMTP, new connection per message", _smtp(plain.url(), reuse=False)),
        _transport_scenario(
            "SMTP STARTTLS + AUTH, pooled connections (reuse)",
            _smtp(starttls.url("bench", "pw"), reuse=True, ca_file=str(tls.cert)),
        ),
        _transport_scenario(
            "SMTP STARTTLS + AUTH, new connection per message",
            _smtp(starttls.url("bench", "pw"), reuse=False, ca_file=str(tls.cert)),
        ),
        _transport_scenario(
            "SendGrid SDK (thread pool) to the local v3 server",
            lambda: SendGridTransport(
                SecretStr("SG.bench"), host=sendgrid.url, timeout=10, max_concurrency=CONCURRENCY
            ),
            note="one HTTP request per message through python_http_client/urllib, no keep-alive",
        ),
    ]
    job_settings = base.model_copy(
        update={
            "redis_url": SecretStr(""),
            "database_url": SecretStr(job_dsn),
            "email_transport": "smtp",
            "smtp_url": SecretStr(plain.url()),
            "smtp_pool_size": CONCURRENCY,
        }
    )
    scenarios.append(_job_scenario(job_settings))
    try:
        for round_ in range(runs):
            for scenario in scenarios:
                elapsed = await scenario.run(count)
                scenario.rates.append(count / elapsed)
            for sink in (plain, starttls):
                sink.received.clear()
            print(f"round {round_ + 1}/{runs} done", file=sys.stderr, flush=True)
    finally:
        sendgrid.stop()
        servers.run(plain.stop())
        servers.run(starttls.stop())
        servers.stop()

    report = {
        "benchmark": "email",
        "messages_per_run": count,
        "runs": runs,
        "concurrency": CONCURRENCY,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "unit": "messages/s",
        "scenarios": [
            {
                "name": s.name,
                "median": round(statistics.median(s.rates), 1),
                "min": round(min(s.rates), 1),
                "max": round(max(s.rates), 1),
                "rates": [round(r, 1) for r in s.rates],
                "note": s.note,
            }
            for s in scenarios
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(_table(scenarios, count, runs))
    print(f"\nwritten to {RESULTS}", file=sys.stderr)


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_email", description=__doc__)
    parser.add_argument("--messages", type=int, default=300, help="messages per run and scenario")
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario")
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.runs))


if __name__ == "__main__":
    cli()
