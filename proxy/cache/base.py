"""What a cache backend stores and the interface both backends implement."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from proxy.completions import Completion


@dataclass(slots=True)
class CachedAnswer:
    """A complete, successful answer and the provider that produced it."""

    completion: Completion
    provider: str


def held_bytes(answer: CachedAnswer) -> int:
    """What keeping ``answer`` in memory costs: its bytes and the objects parsed from them.

    A cache bounded by answer bytes alone held several times ``max_bytes``:
    the parsed data of a small chat completion is ~6x its JSON, an
    embeddings list's ~7x. Walking the objects would be exact but costs
    O(values) per store, so this counts from the bytes, in three C-speed
    scans: every character may take up to three bytes as a Python string
    (plus the bytes themselves), every object about 232 bytes, every other
    value 56. Measured against a deep ``sys.getsizeof`` walk of chat
    answers (ASCII, accented, emoji), tool calls, logprobs and embeddings,
    it is an upper bound, at most ~2.2x over (floats, counted as values).
    """
    body = answer.completion.body
    values = body.count(b",") + body.count(b"[")
    return 3 * len(body) + 232 * body.count(b"{") + 56 * values + _ENTRY_OVERHEAD


_ENTRY_OVERHEAD = 256
"""Bytes of bookkeeping per entry (the key, the cache's own records), so tiny answers still count."""


class CacheUnavailable(Exception):
    """The backend cannot be reached; the request goes upstream uncached."""


class CacheBackend(abc.ABC):
    @abc.abstractmethod
    async def get(self, key: str) -> CachedAnswer | None: ...

    def get_nowait(self, key: str) -> CachedAnswer | None:
        """The entry for ``key`` if this process holds it now, without I/O; None when it cannot tell.

        The hit lane (``proxy.hit_lane``) answers only while this returns the very
        object it learned from, so a backend must return the same object for an
        unchanged entry."""
        return None

    @abc.abstractmethod
    async def set(self, key: str, answer: CachedAnswer, ttl: float) -> None: ...

    @abc.abstractmethod
    async def clear(self) -> int:
        """Remove every entry; returns how many there were."""

    @abc.abstractmethod
    async def entries(self) -> int: ...

    async def start(self) -> None:
        """Begin any background work; called once the event loop runs."""
        return None

    async def aclose(self) -> None:
        return None
