"""In-process cache: TTL per entry, LRU-bounded by entry count and by the memory its entries hold."""

from __future__ import annotations

import time
from dataclasses import replace

from cachetools import TLRUCache

from proxy.cache.base import CacheBackend, CachedAnswer, held_bytes


class MemoryCache(CacheBackend):
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._cache: TLRUCache[str, tuple[CachedAnswer, float]] = TLRUCache(
            maxsize=max_bytes,
            ttu=lambda _key, value, now: now + value[1],
            timer=time.monotonic,
            getsizeof=lambda value: held_bytes(value[0]),
        )

    async def get(self, key: str) -> CachedAnswer | None:
        return self.get_nowait(key)

    def get_nowait(self, key: str) -> CachedAnswer | None:
        try:
            return self._cache[key][0]  # not .get(): its timer context costs as much again
        except KeyError:
            return None

    async def set(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        if answer.completion.upstream_headers is not None:  # they describe the call that made it, not a hit
            answer.completion = replace(answer.completion, upstream_headers=None)
        try:
            self._cache[key] = (answer, ttl)
        except ValueError:  # larger than the whole byte budget: not cacheable
            return
        while len(self._cache) > self._max_entries:
            self._cache.popitem()

    async def clear(self) -> int:
        count = len(self._cache)
        self._cache.clear()
        return count

    async def entries(self) -> int:
        self._cache.expire()
        return len(self._cache)
