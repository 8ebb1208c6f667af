"""Throughput over the last hour, from the workers' per-minute counts, as bar geometry that a
template draws as inline SVG (no chart library, no script: the numbers are computed here).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["HOUR_MINUTES", "Bar", "Chart", "JobHour", "chart", "hour_of_snapshots", "total_of"]

HOUR_MINUTES = 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    peak: int  # the most jobs finished in one minute (the chart's full height)


@dataclass(frozen=True, slots=True)
class JobHour:
    """One job's last hour: finished attempts per minute by outcome, oldest minute first."""

    job: str
    complete: list[int]
    failed: list[int]
    retry: list[int]

    @property
    def done(self) -> int:
        return sum(self.complete) + sum(self.failed)

    @property
    def peak(self) -> int:
        """The most attempts finished in one minute."""
        return max((c + f for c, f in zip(self.complete, self.failed, strict=True)), default=0)

    @property
    def failure_rate(self) -> float:
        return sum(self.failed) / self.done if self.done else 0.0

    def per_minute(self, last: int) -> float:
        """Finished per minute over the last `last` minutes."""
        return (sum(self.complete[-last:]) + sum(self.failed[-last:])) / last


def hour_of_snapshots(snapshots: Iterable[dict[str, Any]], now: float | None = None) -> list[JobHour]:
    """Per job, the hour up to the current minute, summed over the given workers' snapshots."""
    now_minute = int((time.time() if now is None else now) // 60)
    first = now_minute - HOUR_MINUTES + 1
    counts: dict[str, dict[str, list[int]]] = defaultdict(
        lambda: {o: [0] * HOUR_MINUTES for o in ("complete", "failed", "retry")}
    )
    for snapshot in snapshots:
        for minute_text, jobs in snapshot.get("minutes", {}).items():
            index = int(minute_text) - first
            if not 0 <= index < HOUR_MINUTES:
                continue
            for job, outcomes in jobs.items():
                for outcome, series in counts[job].items():
                    series[index] += outcomes.get(outcome, 0)
    return [JobHour(job, s["complete"], s["failed"], s["retry"]) for job, s in sorted(counts.items())]


def total_of(hours: list[JobHour]) -> JobHour:
    """Every job's minutes added up."""

    def add(attr: str) -> list[int]:
        if not hours:
            return [0] * HOUR_MINUTES
        return [sum(values) for values in zip(*(getattr(h, attr) for h in hours), strict=True)]

    return JobHour("all jobs", add("complete"), add("failed"), add("retry"))


def chart(hour: JobHour, *, width: int, height: int, now: float | None = None, gap: float = 1.0) -> Chart:
    """Stacked bars per minute (complete below, failed above), scaled to the busiest minute."""
    now_minute = int((time.time() if now is None else now) // 60)
    done = [c + f for c, f in zip(hour.complete, hour.failed, strict=True)]
    peak = max(done, default=0)
    step = width / HOUR_MINUTES
    bars = []
    for i, (ok, failed) in enumerate(zip(hour.complete, hour.failed, strict=True)):
        ok_h = height * ok / peak if peak else 0.0
        failed_h = height * failed / peak if peak else 0.0
        minute = datetime.fromtimestamp((now_minute - HOUR_MINUTES + 1 + i) * 60, UTC)
        title = f"{minute:%H:%M} UTC: {ok + failed:,} finished, {failed:,} failed, {hour.retry[i]:,} retried"
        bars.append(
            Bar(
                x=round(i * step, 2),
                width=round(max(step - gap, 0.5), 2),
                ok_y=round(height - ok_h, 2),
                ok_height=round(ok_h, 2),
                failed_y=round(height - ok_h - failed_h, 2),
                failed_height=round(failed_h, 2),
                title=title,
            )
        )
    return Chart(width, height, bars, peak)
