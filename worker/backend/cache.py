"""The cache jobs see as `deps.cache`: Redis first, an in-process LRU while Redis is unusable.

Redis makes an entry visible to every worker and producer; the LRU keeps caching useful
during an outage. The cache has its own `RedisLink` (role `cache`), so its breaker decides:
while the breaker is open no network I/O is attempted, and the link's probe closes it again
when Redis answers. A cache never fails a job: every error becomes a miss or a skipped write.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Sequence

import structlog

from core.deps import Cache
from core.errors import BackendError, BackendUnavailable
from settings import Settings
from worker.backend import keys
from worker.backend.link import RedisLink

__all__ = ["HybridCache", "MemoryCache", "make_cache"]

log = structlog.get_logger(__name__)


class MemoryCache:
    """A bounded LRU of bytes with per-entry expiry, for one process."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._entries)

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


class HybridCache:
    """Entries in Redis under `keys.cache_key`; in `memory` when Redis cannot take them.

    With JOB_SIGNING_KEYS set, an entry in Redis is `<32-byte HMAC of key and value><value>`: an
    entry someone else wrote (a forged AI result, say) fails the check and is a miss.
    """

    def __init__(self, link: RedisLink, memory: MemoryCache, signing_keys: Sequence[bytes] = ()) -> None:
        self.link = link
        self.memory = memory
        self._keys = list(signing_keys)
        self._started = False
        self._start_lock = asyncio.Lock()
        self._forged_logged_at = -3600.0

    def _mac(self, secret: bytes, key: str, value: bytes) -> bytes:
        return hmac.new(secret, key.encode() + b"\n" + value, hashlib.sha256).digest()

    def _seal(self, key: str, value: bytes) -> bytes:
        return self._mac(self._keys[0], key, value) + value if self._keys else value

    def _open(self, key: str, stored: bytes) -> bytes | None:
        if not self._keys:
            return stored
        mac, value = stored[:32], stored[32:]
        if any(hmac.compare_digest(self._mac(secret, key, value), mac) for secret in self._keys):
            return value
        if time.monotonic() - self._forged_logged_at > 60:
            self._forged_logged_at = time.monotonic()
            log.warning("ignoring cache entries whose signature does not verify", key=key)
        return None

    async def get(self, key: str) -> bytes | None:
        if await self._redis_usable():
            try:
                value = await self.link.command("GET", keys.cache_key(key))
            except BackendError as exc:  # a cache error is a miss, never a job failure
                self._failed("get", exc)
            else:
                if value is not None and (opened := self._open(key, bytes(value))) is not None:
                    return opened
        # Checked on a Redis miss too: it holds what was written during an outage.
        return await self.memory.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        if await self._redis_usable():
            try:
                sealed = self._seal(key, value)
                await self.link.command("SET", keys.cache_key(key), sealed, "PX", max(1, int(ttl_s * 1000)))
            except BackendError as exc:  # a failed write only costs a later miss
                self._failed("set", exc)
            else:
                return
        await self.memory.set(key, value, ttl_s)

    async def aclose(self) -> None:
        await self.link.aclose()
        await self.memory.aclose()

    async def _redis_usable(self) -> bool:
        # Started on first use: make_cache runs in constructors, outside the event loop.
        if not self._started:
            async with self._start_lock:
                if not self._started:
                    try:
                        await self.link.start()  # a down Redis opens the breaker; the probe follows
                    except BackendError as exc:  # e.g. refused credentials: use memory, do not fail jobs
                        log.warning("cache cannot use redis", error=f"{type(exc).__name__}: {exc}")
                    self._started = True
        return self.link.usable

    def _failed(self, op: str, exc: BackendError) -> None:
        if not isinstance(exc, BackendUnavailable):  # an outage opened the breaker and was logged
            log.warning("cache command failed", op=op, error=f"{type(exc).__name__}: {exc}")


def make_cache(settings: Settings) -> Cache:
    """The process's cache: hybrid when Redis is configured, memory only when it is not."""
    if not settings.redis_enabled:
        return MemoryCache()
    return HybridCache(RedisLink(settings, role="cache"), MemoryCache(), settings.signing_keys)
