"""Wall-clock time as the records store it: whole milliseconds since the Unix epoch."""

from __future__ import annotations

import time

__all__ = ["epoch_ms"]


def epoch_ms() -> int:
    return int(time.time() * 1000)
