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
