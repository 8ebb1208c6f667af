"""The cache jobs see as `deps.cache`.

For now a bounded in-process LRU with expiry; the AI issue puts Redis in front of it.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from jobs.deps import Cache
from settings import Settings

__all__ = ["MemoryCache", "make_cache"]


class MemoryCache:
    """A bounded LRU of bytes with per-entry expiry, for one process."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        self._entries.clear()


def make_cache(settings: Settings) -> Cache:
    return MemoryCache()
