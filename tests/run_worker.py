"""A worker process on the test registry, for tests that kill workers: `python -m tests.run_worker`."""

from __future__ import annotations

import asyncio
import sys

from settings import load_settings
from tests.sample_jobs import TEST_REGISTRY
from worker.engine import WorkerService
from worker.telemetry import configure_logging


async def _run() -> int:
    return await WorkerService(load_settings(), registry=TEST_REGISTRY).run()


def main() -> int:
    configure_logging(load_settings())
    return asyncio.run(_run())


if __name__ == "__main__":
    sys.exit(main())
