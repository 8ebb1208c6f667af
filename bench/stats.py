"""Small helpers shared by the benchmarks: summaries and markdown."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["Summary", "summarize", "table"]


class Summary:
    def __init__(self, samples: Sequence[float]) -> None:
        if not samples:
            raise ValueError("no samples")
        self.median = statistics.median(samples)
        self.min = min(samples)
        self.max = max(samples)
        self.n = len(samples)

    def fmt(self, unit: str = "", digits: int = 2) -> str:
        d = digits
        return f"{self.median:.{d}f}{unit} (min {self.min:.{d}f}, max {self.max:.{d}f}, n={self.n})"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(samples)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
