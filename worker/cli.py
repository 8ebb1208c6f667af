"""`python -m worker run | enqueue | status | jobs | migrate`: the command line for ops and developers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from jobs import REGISTRY
from settings import Settings, SettingsError, load_settings
from worker.errors import EnqueueError, JobFailed, JobValidationError
from worker.logs import configure_logging

__all__ = ["main"]


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


async def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from worker.producer import Producer

    async with Producer(settings) as producer:
        handle = await producer.enqueue_json(args.job, args.args, job_id=args.job_id, inline=args.inline)
        out: dict[str, Any] = {"job_id": handle.job_id, "job": handle.name, "mode": handle.mode}
        if handle.duplicate:
            out["duplicate"] = True
        code = 0
        if handle.mode == "inline" or args.wait is not None:
            try:
                out["result"] = await handle.result(timeout=args.wait)
            except JobFailed as exc:
                out["error"] = exc.to_dict()
                code = 1
            except TimeoutError:
                out["error"] = {"type": "TimeoutError", "message": f"no result within {args.wait}s"}
                code = 1
        _print_json(out)
        return code


async def _status(settings: Settings, job_id: str) -> int:
    from worker.redis_link import RedisLink
    from worker.status import job_status

    link = RedisLink(settings, role="cli")
    try:
        await link.start()
        if not link.usable:
            _print_json({"job_id": job_id, "status": "unknown", "error": f"Redis is {link.state.value}"})
            return 2
        report = await job_status(link, job_id, settings.queue_name)
    finally:
        await link.aclose()
    _print_json(report)
    return 0 if report["status"] != "not_found" else 1


async def _migrate(settings: Settings) -> int:
    import asyncpg

    from worker.migrate import apply_migrations

    try:
        conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        sys.stderr.write(
            f"error: cannot connect to Postgres at {settings.database_url_redacted}: {exc}; "
            "check DATABASE_URL and that the server is up\n"
        )
        return 2
    try:
        applied = await apply_migrations(conn)
    except asyncpg.PostgresError as exc:
        sys.stderr.write(f"error: migration failed: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        await conn.close()
    _print_json({"applied": applied})
    return 0


def _jobs() -> int:
    for definition in REGISTRY:
        _print_json(
            {
                "job": definition.name,
                "args": definition.arg_names,
                "timeout_s": definition.timeout,
                "max_tries": definition.max_tries,
                "description": definition.description,
            }
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Max Booster job runner")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the worker until SIGTERM")
    run.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    enqueue = sub.add_parser("enqueue", help="enqueue a job (or run it inline when Redis is down)")
    enqueue.add_argument("job", help="registered job name (see `jobs`)")
    enqueue.add_argument("--args", default="{}", help="keyword arguments as a JSON object")
    enqueue.add_argument("--job-id", default=None, help="your own id; a second enqueue with it is a no-op")
    enqueue.add_argument(
        "--inline", action="store_true", help="run here and now, whatever the state of Redis"
    )
    enqueue.add_argument(
        "--wait", type=float, default=None, metavar="SECONDS", help="wait for a queued result"
    )
    status = sub.add_parser("status", help="show a job's state, result or error")
    status.add_argument("job_id")
    sub.add_parser("jobs", help="list registered jobs")
    sub.add_parser("migrate", help="apply pending Postgres migrations and print the versions applied")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    configure_logging(settings)
    try:
        if args.command == "run":
            from worker.service import run_worker

            return asyncio.run(run_worker(settings, burst=args.burst))
        if args.command == "enqueue":
            return asyncio.run(_enqueue(settings, args))
        if args.command == "status":
            return asyncio.run(_status(settings, args.job_id))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        return _jobs()
    except (JobValidationError, EnqueueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
