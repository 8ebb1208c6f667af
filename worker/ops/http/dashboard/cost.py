"""Redis commands per day at the current rate, against a managed Redis's free tier and price.

The figures are the platform's own (its production requirements name Upstash): a free tier of
10,000 commands a day, then $0.20 per 100,000 commands. The rate comes from the server's
command counter (INFO `total_commands_processed`, every client's commands, those inside scripts
included), read at each overview render: two readings far enough apart give the current rate;
until then, the average since the server started. Nothing is read in the background, so a
dashboard nobody looks at costs nothing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from worker.backend import CommandStats

__all__ = ["FREE_COMMANDS_PER_DAY", "PRICE_PER_COMMAND_USD", "CommandRate", "RedisCost"]

FREE_COMMANDS_PER_DAY = 10_000
PRICE_PER_COMMAND_USD = 0.20 / 100_000
# Readings kept, and the shortest span a "current" rate is computed over.
_WINDOW_S = 15 * 60.0
_MIN_SPAN_S = 10.0


@dataclass(frozen=True, slots=True)
class RedisCost:
    per_day: float
    basis: str  # what the rate was measured over, for the page
    free_per_day: int = FREE_COMMANDS_PER_DAY

    @property
    def cost_per_day_usd(self) -> float:
        return self.per_day * PRICE_PER_COMMAND_USD

    @property
    def budget_share(self) -> float:
        return self.per_day / self.free_per_day


class CommandRate:
    def __init__(self) -> None:
        self._readings: deque[tuple[float, int]] = deque()

    def add(self, stats: CommandStats, now: float | None = None) -> RedisCost:
        now = time.monotonic() if now is None else now
        if self._readings and stats.total_commands < self._readings[-1][1]:
            self._readings.clear()  # the server restarted: its counter began again
        self._readings.append((now, stats.total_commands))
        while len(self._readings) > 2 and self._readings[0][0] < now - _WINDOW_S:
            self._readings.popleft()
        first_at, first_total = self._readings[0]
        span = now - first_at
        if span >= _MIN_SPAN_S:
            rate = (stats.total_commands - first_total) / span
            return RedisCost(rate * 86_400, f"rate over the last {_span(span)}")
        if stats.uptime_s > 0:
            rate = stats.total_commands / stats.uptime_s
            return RedisCost(rate * 86_400, f"average since Redis started {_span(stats.uptime_s)} ago")
        return RedisCost(0.0, "no reading yet")


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
