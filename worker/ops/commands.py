"""What each command of `python -m worker` does, once `worker.ops.cli` has read its arguments."""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import sys
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from core.deps import connect_postgres
from core.errors import (
    BackendError,
    BackendRefused,
    EnqueueError,
    JobFailed,
    JobModuleError,
    JobValidationError,
)
from core.flow import check_queue_name, ordered_union, queue_key
from jobs import registry_for
from settings import Settings, SettingsError, load_settings
from worker.backend import QueueBackend, RedisBackend
from worker.ledger.migrate import apply_migrations, postgres_problem
from worker.ops import deadletters, queuectl
from worker.ops.schema import job_schemas
from worker.ops.stats import collect_stats, render_stats
from worker.ops.supervisor import Supervisor, as_child
from worker.ops.typescript import typescript_types
from worker.producer import Producer
from worker.telemetry import configure_logging

# The HTTP service (Starlette, uvicorn, the dashboard), the doctor and the demo (the dev
# services) are imported by their own commands, inside them: `run` and `enqueue` would otherwise
# carry ~8 MB and ~100 modules they never use (issue 18). Nothing imports this module but
# `worker.ops.cli`, so these imports hide no cycle; tests/test_architecture.py allows them here only.

__all__ = ["run_command"]


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


def _check_enqueue(settings: Settings, args: argparse.Namespace) -> None:
    """Everything that can be refused without Redis: the job name, the JSON, the arguments, the
    job's own settings. Raises `JobValidationError` before anything connects or logs."""
    definition = registry_for(settings).get(args.job)
    try:
        orjson.loads(args.args)
    except orjson.JSONDecodeError as exc:
        raise JobValidationError(
            f'--args is not valid JSON ({exc}); give an object such as \'{{"message": "hi"}}\''
        ) from None
    definition.payload_from_json(args.args, max_bytes=settings.max_payload_bytes)
    definition.check_settings(settings)
    if args.queue is not None:
        check_queue_name(args.queue)


async def _workers_alive(backend: QueueBackend, queue: str) -> str:
    """What the worker snapshots say about workers of `queue`, for a `--wait` that timed out."""
    try:
        snapshots = [orjson.loads(raw) for raw in await backend.worker_snapshots()]
    except (BackendError, orjson.JSONDecodeError):
        return "whether a worker is alive is unknown (Redis did not answer)"
    ours = [s for s in snapshots if isinstance(s, dict) and s.get("queue") == queue]
    if not ours:
        return (
            f"no worker has reported on queue {queue!r} in the last 10 minutes; start one with "
            f"`python -m worker run` (with QUEUE_NAME={queue})"
        )
    age = max(0.0, time.time() - max(float(s.get("at") or 0) for s in ours))
    return f"{len(ours)} worker(s) of queue {queue!r} alive (last report {age:.0f}s ago)"


async def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    _check_enqueue(settings, args)
    async with Producer(settings) as producer:
        handle = await producer.enqueue_json(
            args.job, args.args, job_id=args.job_id, inline=args.inline, queue=args.queue
        )
        out: dict[str, Any] = {"job_id": handle.job_id, "job": handle.name, "mode": handle.mode}
        if handle.duplicate:
            out["duplicate"] = True
        if producer.last_refusal is not None:
            out["redis_refused"] = producer.last_refusal  # a configuration error: say so
        code = 0
        if handle.mode == "inline" or args.wait is not None:
            try:
                out["result"] = await handle.result(timeout=args.wait)
            except JobFailed as exc:
                out["error"] = exc.to_dict()
                code = 1
            except TimeoutError:
                status = (await producer.status(handle.job_id)).get("status", "unknown")
                workers = await _workers_alive(producer.backend, settings.queue_name)
                out["error"] = {
                    "type": "TimeoutError",
                    "message": f"no result within {args.wait}s; the job is {status}; {workers}",
                }
                code = 1
        _print_json(out)
        return code


async def _status(settings: Settings, job_id: str) -> int:
    async with Producer(settings) as producer:
        report = await producer.status(job_id)
    _print_json(report)
    return 0 if report["status"] not in ("not_found", "unknown") else 1


async def _dead(settings: Settings, args: argparse.Namespace) -> int:
    async with Producer(settings) as producer:
        ledger = producer.ledger
        if args.action == "list":
            for letter in await ledger.dead_letters(limit=args.limit):
                _print_json(deadletters.dead_letter_row(letter, full=False))
        elif args.action == "show":
            found = await ledger.dead_letter_of(args.job_id)
            if found is None:
                sys.stderr.write(f"error: no dead letter with job id {args.job_id!r}\n")
                return 1
            _print_json(deadletters.dead_letter_row(found, full=True))
        elif args.action == "retry":
            if not args.all and not args.job_id:
                sys.stderr.write("error: give a job id or --all\n")
                return 2
            for row in await deadletters.retry_dead(producer, None if args.all else [args.job_id]):
                _print_json(row)
        else:
            _print_json({"purged": await ledger.purge_dead_letters(older_than_days=args.older_than_days)})
    return 0


async def _stats(settings: Settings, as_json: bool) -> int:
    backend = RedisBackend(settings, role="cli")
    try:
        await backend.start()
        if not backend.usable:
            sys.stderr.write(f"error: Redis is {backend.state.value} ({settings.redis_url_redacted})\n")
            return 2
        queues = {
            queue_key(settings, name): name
            for name in ordered_union(settings.worker_queue_weights, registry_for(settings).queues())
        }
        report = await collect_stats(backend, settings.queue_name, queues)
    finally:
        await backend.aclose()
    if as_json:
        _print_json(report)
    else:
        sys.stdout.write(render_stats(report) + "\n")
    return 0


async def _doctor(settings: Settings, as_json: bool) -> int:
    from worker.ops.doctor import diagnose, render_diagnosis  # only this command needs it (see the imports)

    diagnosis = await diagnose(settings)
    if as_json:
        _print_json(diagnosis.as_dict())
    else:
        sys.stdout.write(render_diagnosis(diagnosis) + "\n")
    return 0 if diagnosis.healthy else 1


async def _migrate(settings: Settings) -> int:
    try:
        conn = await connect_postgres(settings)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        sys.stderr.write(f"error: {postgres_problem(settings, exc)}\n")
        return 2
    try:
        applied = await apply_migrations(conn, schema=settings.database_schema)
    except asyncpg.PostgresError as exc:
        sys.stderr.write(f"error: migration failed: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        await conn.close()
    _print_json({"applied": applied, "schema": settings.database_schema})
    return 0


def _csv_chunks(path: str, budget: int) -> list[tuple[int, str]]:
    """The file as (line of the chunk's header, CSV text with the header) chunks of at most about
    `budget` bytes, each a whole number of records. Raises OSError or ValueError."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError("the file is empty")
        chunks: list[tuple[int, str]] = []
        buffer, first_line, size = io.StringIO(), 1, 0
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        header_size = buffer.tell()
        for record in reader:
            if size > budget:
                chunks.append((first_line, buffer.getvalue()))
                buffer.seek(0)
                buffer.truncate()
                writer.writerow(header)
                size = 0
            if size == 0:
                first_line = reader.line_num - 1  # so the chunk's first record is `first_line + 1`
            writer.writerow(record)
            size = buffer.tell() - header_size
        if size:
            chunks.append((first_line, buffer.getvalue()))
    if not chunks:
        raise ValueError("the file has a header but no rows")
    return chunks


async def _import_streams(settings: Settings, args: argparse.Namespace) -> int:
    """Validate every chunk of the file, then run (or queue) one `import_streams` job per chunk."""
    definition = registry_for(settings).get("import_streams")
    budget = min(128 * 1024, settings.max_payload_bytes // 2)
    try:
        chunks = _csv_chunks(args.file, budget)
    except (OSError, ValueError, csv.Error) as exc:
        raise JobValidationError(f"{args.file}: {exc}") from None
    payloads, problems = [], []
    for first_line, text in chunks:  # every chunk is checked before any is imported
        kwargs = {"report": {"csv": text, "first_line": first_line}}
        try:
            payloads.append(definition.payload(kwargs, max_bytes=settings.max_payload_bytes))
        except JobValidationError as exc:
            problems.append(str(exc).removeprefix("import_streams: argument 'report': "))
    if problems:
        raise JobValidationError(f"{args.file}: nothing imported; " + "; ".join(problems))
    totals: dict[str, Any] = {"file": args.file, "chunks": len(payloads)}
    async with Producer(settings) as producer:
        for payload in payloads:
            job_id = "import-streams:" + hashlib.sha256(payload["report"]["csv"].encode()).hexdigest()[:32]
            raw = orjson.dumps(payload)
            handle = await producer.enqueue_json(definition, raw, job_id=job_id, inline=not args.queue)
            if args.queue:
                totals.setdefault("job_ids", []).append(handle.job_id)
                totals["mode"] = handle.mode
                continue
            result = await handle.result()
            for key in ("rows", "imported", "already_imported", "skipped_zero", "titles"):
                totals[key] = totals.get(key, 0) + result[key]
            for key, pick in (("first_day", min), ("last_day", max)):
                if result[key] is not None:
                    totals[key] = pick(filter(None, (totals.get(key), result[key])))
            totals["mode"] = "inline"
    _print_json(totals)
    return 0


def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    registry = registry_for(settings)
    if args.typescript:
        sys.stdout.write(typescript_types(job_schemas(registry)))
        return 0
    if args.schema:
        sys.stdout.write(orjson.dumps(job_schemas(registry), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for definition in registry:
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


def _run(settings: Settings, args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """`run`: this process is the worker, or (`--processes N`) the supervisor of N workers."""
    # Here, not at the top: the other commands (enqueue above all) need none of the engine.
    from worker.engine import run_worker
    from worker.engine.eventloop import run_until_done

    if args.child_of is not None and args.child_index is not None:
        settings = as_child(settings, args.child_of, args.child_index)
        group = {"supervisor": args.child_of, "child": args.child_index}
        return run_until_done(run_worker(settings, burst=args.burst, group=group), settings)
    if args.processes == 1:
        return run_until_done(run_worker(settings, burst=args.burst), settings)
    if not settings.redis_enabled:  # each child would say so and exit, over and over
        sys.stderr.write(
            "error: REDIS_URL is empty: the worker needs Redis; set REDIS_URL=redis://host:6379/0\n"
        )
        return 2
    given = list(sys.argv[1:] if argv is None else argv)
    supervisor = Supervisor(settings, args.processes, given[given.index("run") + 1 :], burst=args.burst)
    problem = supervisor.check_ports()
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    return asyncio.run(supervisor.run())


def _jobs_flag(message: str, args: argparse.Namespace) -> str:
    """A message about JOB_MODULES, naming `--jobs` when that is where the modules came from."""
    return message.replace("JOB_MODULES", "--jobs") if getattr(args, "jobs", None) is not None else message


def run_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run the command `args` names (parsed by `worker.ops.cli`); returns the exit code."""
    if args.command == "demo":
        from worker.ops import demo  # only this command needs it (see the imports)

        return demo.main()
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if getattr(args, "jobs", None) is not None:
        try:
            settings = load_settings(job_modules=args.jobs)
        except SettingsError as exc:
            sys.stderr.write(f"{str(exc).replace('JOB_MODULES', '--jobs')}\n")
            return 2
    try:
        registry_for(settings)  # the extra job modules load here, so a bad one stops every command
    except JobModuleError as exc:
        sys.stderr.write(f"error: {_jobs_flag(str(exc), args)}\n")
        return 2
    configure_logging(settings)
    try:
        if args.command == "run":
            if args.queues is not None:
                try:
                    settings = load_settings(worker_queues=args.queues)
                except SettingsError as exc:
                    sys.stderr.write(f"{str(exc).replace('WORKER_QUEUES', '--queues')}\n")
                    return 2
            return _run(settings, args, argv)
        if args.command == "cancel":
            return asyncio.run(queuectl.cancel(settings, args.job_id))
        if args.command == "queues":
            return asyncio.run(queuectl.list_queues(settings, args.json))
        if args.command in ("pause", "resume"):
            change = queuectl.pause if args.command == "pause" else queuectl.resume
            return asyncio.run(change(settings, args.queue))
        if args.command == "enqueue":
            return asyncio.run(_enqueue(settings, args))
        if args.command == "status":
            return asyncio.run(_status(settings, args.job_id))
        if args.command == "dead":
            return asyncio.run(_dead(settings, args))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "doctor":
            return asyncio.run(_doctor(settings, args.json))
        if args.command == "stats":
            return asyncio.run(_stats(settings, args.json))
        if args.command == "import-streams":
            return asyncio.run(_import_streams(settings, args))
        if args.command == "serve":
            from worker.ops.http import serve  # only this command needs it (see the imports)

            overrides = {"api_host": args.host, "api_port": args.port}
            return serve(settings.model_copy(update={k: v for k, v in overrides.items() if v is not None}))
        return _jobs(settings, args)
    except (JobValidationError, EnqueueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except BackendRefused as exc:
        sys.stderr.write(f"error: {exc}; fix REDIS_URL (user, password, ACL)\n")
        return 2
    except KeyboardInterrupt:
        return 130
