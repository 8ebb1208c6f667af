"""A requests-per-minute budget for one process's calls to the AI provider."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from core.errors import TransientError

__all__ = ["RequestBudget"]


class RequestBudget:
    """At most `per_window` requests start in any `window_s` seconds (a sliding window).

    A request that fits within `max_wait_s` waits for its slot; one that would wait longer is
    not sent and raises `TransientError(retry_after=...)`, the same way a provider's 429 does,
    so the job goes back to the retry policy instead of holding a worker slot while it waits.
    """

    def __init__(self, per_window: int, *, window_s: float = 60.0, max_wait_s: float = 2.0) -> None:
        if per_window < 1:
            raise ValueError("per_window must be at least 1")
        self._window_s = window_s
        self._max_wait_s = max_wait_s
        # Start times of the last `per_window` requests, some possibly reserved in the future;
        # the list stays sorted because each new slot is at or after the previous one.
        self._starts: deque[float] = deque(maxlen=per_window)

    def _next_slot(self, now: float) -> float:
        if len(self._starts) < (self._starts.maxlen or 0):
            return now
        return max(now, self._starts[0] + self._window_s)

    async def acquire(self) -> None:
        now = time.monotonic()
        slot = self._next_slot(now)
        wait = slot - now
        if wait > self._max_wait_s:
            raise TransientError(
                f"AI request budget spent (AI_REQUESTS_PER_MINUTE); next slot in {wait:.1f}s",
                retry_after=wait,
            )
        self._starts.append(slot)  # reserve before sleeping, so waiters queue in order
        if wait > 0:
            await asyncio.sleep(wait)
