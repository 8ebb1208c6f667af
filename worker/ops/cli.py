"""`python -m worker run | serve | enqueue | status | cancel | queues | pause | resume | jobs | dead
| migrate | doctor | stats | demo`: the command line for ops and developers.

This module reads the arguments with nothing but argparse, so `--help` and a mistyped option
answer before the runner (pydantic, redis-py, the job families) is imported; then
`worker.ops.commands` runs the command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "parser"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from worker.ops import deferred

    deferred.defer()  # before redis is imported (see worker.ops.deferred)
    from worker.ops.commands import run_command  # after the arguments: see the docstring

    return run_command(args, argv)


def parse_processes(value: str) -> int:
    """`--processes`: a whole number from 1, or `auto` for one per core (argparse type)."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1 or count > 1024:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of worker processes; use a whole number from 1 "
            "(the default, one process) to 1024, or auto for one per core"
        )
    return count


def parser() -> argparse.ArgumentParser:
    """Every command and its options."""
    # Named as it was called: the console script, or the module.
    prog = "maxbooster-jobs" if sys.argv[0].endswith("maxbooster-jobs") else "python -m worker"
    parser = argparse.ArgumentParser(prog=prog, description="Max Booster job runner")
    # No abbreviations: `--arg` must be reported as unknown, not taken for `--args`.
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Subparser)
    run = sub.add_parser("run", help="run the worker until SIGTERM")
    run.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    run.add_argument(
        "--queues",
        default=None,
        help="the queues to consume, in priority order or weighted (default WORKER_QUEUES): critical,default",
    )
    run.add_argument(
        "--processes",
        type=parse_processes,
        default=1,
        metavar="N",
        help="worker processes to run and supervise, or auto for one per core (default 1: this "
        "process); process i serves health on WORKER_HTTP_PORT + i",
    )
    # Set by the supervisor on the processes it starts; not for people.
    run.add_argument("--child-of", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--child-index", type=int, default=None, help=argparse.SUPPRESS)
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
    enqueue.add_argument("--queue", default=None, help="the queue, instead of the one the job names")
    status = sub.add_parser("status", help="show a job's state, progress, result or error")
    status.add_argument("job_id")
    sub.add_parser(
        "cancel", help="cancel a queued, deferred or spooled job; ask a running one to stop"
    ).add_argument("job_id")
    queues = sub.add_parser("queues", help="each queue: jobs due, deferred and running, paused or not, caps")
    queues.add_argument("--json", action="store_true", help="one JSON line per queue instead of a table")
    sub.add_parser("pause", help="stop workers claiming from a queue (jobs keep arriving)").add_argument(
        "queue"
    )
    sub.add_parser("resume", help="let workers claim from a paused queue again").add_argument("queue")
    serve_cmd = sub.add_parser("serve", help="serve the HTTP enqueue API (API_HOST:API_PORT)")
    serve_cmd.add_argument("--host", default=None, help="address to bind (default API_HOST)")
    serve_cmd.add_argument("--port", type=int, default=None, help="port (default API_PORT)")
    jobs_cmd = sub.add_parser("jobs", help="list registered jobs")
    jobs_cmd.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of every job's arguments"
    )
    jobs_cmd.add_argument(
        "--typescript", action="store_true", help="print TypeScript types generated from that schema"
    )
    dead = sub.add_parser("dead", help="inspect and re-run jobs that failed for good")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    dead_list = dead_sub.add_parser("list", help="the most recent dead letters, one JSON line each")
    dead_list.add_argument("--limit", type=int, default=100)
    dead_sub.add_parser("show", help="one dead letter with its arguments").add_argument("job_id")
    dead_retry = dead_sub.add_parser("retry", help="enqueue again under a new job id")
    dead_retry.add_argument("job_id", nargs="?")
    dead_retry.add_argument("--all", action="store_true", help="every dead letter")
    dead_purge = dead_sub.add_parser("purge", help="delete dead letters")
    dead_purge.add_argument("--older-than-days", type=float, default=None)
    sub.add_parser("migrate", help="apply pending Postgres migrations and print the versions applied")
    imports = sub.add_parser(
        "import-streams",
        help="import a CSV report of historical streams (any age; importing it again adds nothing)",
    )
    imports.add_argument("file", help="CSV with date, artist_id, track_id, platform and streams columns")
    imports.add_argument(
        "--queue", action="store_true", help="queue the chunks for the workers instead of importing here"
    )
    sub.add_parser(
        "demo", help="the runner doing its job, with a throwaway Redis (what `make run` shows first)"
    )
    doctor = sub.add_parser(
        "doctor", help="check Redis, Postgres, email and AI; say what works and how to fix"
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    stats = sub.add_parser("stats", help="queue depths, in-progress jobs, recent throughput per job")
    stats.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    # Every command that reads the registry takes the extra job modules (JOB_MODULES).
    for name, command in sub.choices.items():
        if name != "demo":
            command.add_argument(
                "--jobs",
                default=None,
                metavar="MODULE[,MODULE]",
                help="modules of your own whose define(...) jobs join the registry (default JOB_MODULES)",
            )
    return parser


class _Subparser(argparse.ArgumentParser):
    """A command's parser; its unknown arguments are reported with the ones it takes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            valid = [
                o
                for a in self._actions
                if a.help != argparse.SUPPRESS
                for o in a.option_strings
                if o not in ("-h", "--help")
            ]
            takes = f"it takes {', '.join(valid)}" if valid else "it takes no options"
            self.error(f"unknown argument {' '.join(extras)}; {takes} (see {self.prog} --help)")
        return parsed, extras
