"""A steady background load for the latency benchmark, in its own process.

    python -m bench.load KIND REDIS_URL QUEUE RATE SECONDS

Enqueues no-op jobs one call at a time at RATE jobs/s (catching up in small bursts when the
event loop falls behind), through the kind's own client, then exits.
"""

from __future__ import annotations

import asyncio
import sys
import time

from bench.harness import client_for

__all__ = ["main"]


async def _run(kind: str, url: str, queue: str, rate: float, seconds: float) -> int:
    client = await client_for(kind, url, queue)
    sent = 0
    started = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                await asyncio.gather(*(client.enqueue("noop") for _ in range(due)))
                sent += due
            await asyncio.sleep(0.001)
    finally:
        await client.close()
    return 0


def main(argv: list[str]) -> int:
    kind, url, queue, rate, seconds = argv
    return asyncio.run(_run(kind, url, queue, float(rate), float(seconds)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
