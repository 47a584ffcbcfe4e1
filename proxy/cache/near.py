"""A near copy of the Redis cache: the entries this process read, kept while Redis says they stand.

A Redis hit costs a network round trip and redis-py's command path (~180 µs
of this process's time, against ~100 µs for a memory hit), and without a
local answer the hit lane (``proxy.hit_lane``) cannot serve it at all. So
``RedisCache`` keeps what it reads here, and follows Redis's own
invalidation messages for Sluice's keys (client-side caching, ``CLIENT
TRACKING ... BCAST PREFIX sluice:cache:``): whenever any process writes,
deletes or expires a key, Redis names it, and its copy is dropped here.

The copy is trusted only while those messages can be heard (``live``): it
is emptied whenever the following connection is lost or Redis stops
answering its pings, and each entry also ends at its own TTL. A read that
overlaps an invalidation of its key, or of everything, is not kept, since
the message may have been about the value it brought back: each message
moves ``epoch``, a read notes the epoch it began at, and the epoch of each
key's last invalidation is remembered for as long as reads can be in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from proxy.cache.base import CachedAnswer, held_bytes
from proxy.fifo import BoundedFifo

_CHANGED_MAX = 10_000
"""Keys whose last invalidation is remembered; past this they are forgotten, and no read then in flight is kept."""


class NearCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._entries: BoundedFifo[str, tuple[CachedAnswer, float]] = BoundedFifo(max_entries, max_bytes)
        """key → (answer, monotonic deadline), the oldest kept leaving first."""
        self.live = False
        self.epoch = 0
        """Moves on every invalidation and reset."""
        self._changed: dict[str, int] = {}  # key → the epoch its last invalidation moved to
        self._flushed = 0  # the epoch the last invalidation of everything moved to

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedAnswer | None:
        if not self.live:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._entries.discard(key)
            return None
        return entry[0]

    def keep(self, key: str, answer: CachedAnswer, ttl_ms: int, epoch: int) -> None:
        """Keep what a read that began at ``epoch`` found, for the ``ttl_ms`` Redis gave it."""
        if not self.live or ttl_ms <= 0 or self._flushed > epoch or self._changed.get(key, -1) > epoch:
            return
        self._entries.put(key, (answer, time.monotonic() + ttl_ms / 1000), held_bytes(answer))

    def invalidate(self, keys: Iterable[str] | None) -> None:
        """Redis says these keys changed (None: all of them)."""
        self.epoch += 1
        if keys is None:
            self._entries.clear()
        if keys is None or len(self._changed) >= _CHANGED_MAX:
            self._changed.clear()
            self._flushed = self.epoch  # no read in flight now is kept
        for key in keys or ():
            self._entries.discard(key)
            self._changed[key] = self.epoch

    def reset(self, live: bool) -> None:
        """Empty, and trust what is kept from now on only if ``live``."""
        self.invalidate(None)
        self.live = live
