"""A worker process for the benchmarks: ours, or plain arq at default or tuned settings.

    python -m bench.worker_entry ours|arq-default|arq-tuned REDIS_URL QUEUE

Logs go to stderr at INFO, as in production (the caller points stderr at a file).
"""

from __future__ import annotations

import logging.config
import sys
from typing import Any

from arq.connections import RedisSettings
from arq.logs import default_log_config
from arq.worker import Worker
from pydantic import SecretStr

from bench.jobs import ARQ_FUNCTIONS, BENCH_REGISTRY
from settings import Settings
from worker.engine import WorkerService
from worker.engine.eventloop import run_until_done
from worker.telemetry import configure_logging

__all__ = ["ARQ_TUNED", "main"]

# "Tuned" arq: as many concurrent jobs as ours, more jobs read per poll, 10 ms polling.
ARQ_TUNED: dict[str, Any] = {"max_jobs": 100, "queue_read_limit": 500, "poll_delay": 0.01}


def _ours(url: str, queue: str) -> int:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=SecretStr(url), queue_name=queue, log_format="json"
    )
    configure_logging(settings)
    # As `python -m worker run` does (see worker.engine.service.settle_heap).
    return run_until_done(WorkerService(settings, registry=BENCH_REGISTRY, freeze_heap=True).run(), settings)


def _arq(url: str, queue: str, tuned: bool) -> int:
    logging.config.dictConfig(default_log_config(verbose=True))  # what the `arq` command does
    worker = Worker(
        functions=ARQ_FUNCTIONS,
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=queue,
        **(ARQ_TUNED if tuned else {}),
    )
    worker.run()
    return 0


def main(argv: list[str]) -> int:
    kind, url, queue = argv
    if kind == "ours":
        return _ours(url, queue)
    return _arq(url, queue, tuned=kind == "arq-tuned")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
