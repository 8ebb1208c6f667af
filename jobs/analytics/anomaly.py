"""Robust anomaly scoring of a daily series, with its weekly rhythm taken into account.

For a day d, the history is the days before it (up to ANALYTICS_ANOMALY_HISTORY_DAYS, from the
series' first day, missing days counting as zero). Music listening has a weekly shape (more on
weekends, say), so each weekday gets a factor: the median of that weekday's values over the
median of all. The level is the median of the values divided by their factors, and the
expected value of d is level x factor(weekday of d). The spread is the MAD of the residuals
(scaled by 1.4826 to match a standard deviation), floored at sqrt(expected): counts are at
least Poisson-noisy, and a perfectly flat history would otherwise make any wobble infinite.

A day is flagged when its robust z-score passes the threshold AND it is far from expected in
relative terms (min change) AND the numbers are big enough to matter (min volume). Medians and
MADs ignore earlier spikes, so one anomaly does not hide the next.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

__all__ = ["DetectorConfig", "Finding", "expected_value", "scan_series"]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    threshold: float = 4.0
    min_change: float = 0.5
    min_volume: float = 20.0
    history_days: int = 28
    min_history_days: int = 14


@dataclass(frozen=True, slots=True)
class Finding:
    day: date
    kind: Literal["spike", "drop"]
    observed: float
    expected: float
    score: float


def _weekday_factors(history: Sequence[tuple[date, float]]) -> dict[int, float]:
    overall = statistics.median(value for _, value in history)
    by_weekday: dict[int, list[float]] = {}
    for day, value in history:
        by_weekday.setdefault(day.weekday(), []).append(value)
    # Without two weeks of each weekday, or with a mostly-zero series, assume no weekly shape.
    if overall <= 0 or len(by_weekday) < 7 or min(len(v) for v in by_weekday.values()) < 2:
        return dict.fromkeys(range(7), 1.0)
    return {weekday: statistics.median(values) / overall for weekday, values in by_weekday.items()}


def expected_value(history: Sequence[tuple[date, float]], day: date) -> tuple[float, float]:
    """(expected value of `day`, spread) from the history before it."""
    factors = _weekday_factors(history)
    adjusted = [value / factors[d.weekday()] for d, value in history if factors[d.weekday()] > 0]
    level = statistics.median(adjusted) if adjusted else 0.0
    residuals = [value - level * factors[d.weekday()] for d, value in history]
    centre = statistics.median(residuals)
    mad = statistics.median(abs(r - centre) for r in residuals)
    expected = level * factors[day.weekday()]
    spread = max(_MAD_TO_SIGMA * mad, math.sqrt(max(expected, 1.0)))
    return expected, spread


def _judge(
    day: date, observed: float, expected: float, spread: float, config: DetectorConfig
) -> Finding | None:
    score = (observed - expected) / spread
    change = abs(observed - expected)
    if abs(score) < config.threshold or max(observed, expected) < config.min_volume:
        return None
    if change < config.min_change * expected:
        return None
    kind: Literal["spike", "drop"] = "spike" if score > 0 else "drop"
    return Finding(day, kind, observed, round(expected, 3), round(score, 3))


def scan_series(
    values: Mapping[date, float],
    days: Sequence[date],
    config: DetectorConfig,
    *,
    first_day: date | None = None,
) -> list[Finding]:
    """Judge each of `days` against the history before it; `values` holds the non-zero days."""
    start = first_day or (min(values) if values else None)
    if start is None:
        return []
    findings = []
    for day in days:
        history_start = max(start, day - timedelta(days=config.history_days))
        span = (day - history_start).days
        if span < config.min_history_days:
            continue
        history = [(d, values.get(d, 0.0)) for d in (history_start + timedelta(days=i) for i in range(span))]
        expected, spread = expected_value(history, day)
        finding = _judge(day, values.get(day, 0.0), expected, spread, config)
        if finding is not None:
            findings.append(finding)
    return findings
