"""Stored responses: what Sluice keeps so a bridged Responses conversation can continue.

A bridged provider keeps no state, so Sluice keeps each stored response (its
input items, the history's included, its ``response`` object, and who made
it) for ``responses.ttl_seconds``: ``previous_response_id`` continues from it
and ``GET``/``DELETE /v1/responses/{id}`` and ``…/input_items`` read it. A
native response stays with its provider; Sluice only remembers which
provider made each id, and for whom, so those routes can be forwarded there.

In memory (LRU and TTL, per process) or, with ``cache.backend: redis``, in
Redis with its TTL, shared by every process. A Redis outage loses stored
state for its duration, never a request: a lookup finds nothing, a write is
skipped (the outage logged once, as ``proxy.redis_link`` does for every part).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cachetools import TTLCache
from redis.asyncio import Redis

from proxy.config import Config
from proxy.redis_link import RedisLink, RedisUnavailable

_RECORD_PREFIX = "sluice:responses:"
_ORIGIN_PREFIX = "sluice:response-origin:"


@dataclass(frozen=True, slots=True)
class NativeOrigin:
    """Which provider made a native response, and for whom: Sluice's own upstream key may
    serve many callers, so the {id} routes check the caller as they do for stored responses."""

    provider: str
    identity: str


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One bridged response, owned by ``identity``; ``input_items`` include its history's."""

    identity: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]

    def encode(self) -> bytes:
        return orjson.dumps({"identity": self.identity, "response": self.response, "input_items": self.input_items})

    @classmethod
    def decode(cls, raw: bytes) -> StoredResponse | None:
        try:
            data = orjson.loads(raw)
            return cls(data["identity"], data["response"], data["input_items"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None


class ResponseStore(Protocol):
    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def put(self, record: StoredResponse) -> None: ...

    async def delete(self, response_id: str) -> None:
        """Forget the response, stored or native."""

    async def remember_native(self, response_id: str, origin: NativeOrigin) -> None: ...

    async def native_origin(self, response_id: str) -> NativeOrigin | None: ...

    async def aclose(self) -> None: ...


class MemoryResponseStore:
    """Per process: LRU-bounded to ``max_entries``, each entry kept ``ttl`` seconds."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._records: TTLCache[str, StoredResponse] = TTLCache(max_entries, ttl, timer=time.monotonic)
        self._origins: TTLCache[str, NativeOrigin] = TTLCache(max_entries, ttl, timer=time.monotonic)

    async def get(self, response_id: str) -> StoredResponse | None:
        return self._records.get(response_id)

    async def put(self, record: StoredResponse) -> None:
        self._records[record.response["id"]] = record

    async def delete(self, response_id: str) -> None:
        self._records.pop(response_id, None)
        self._origins.pop(response_id, None)

    async def remember_native(self, response_id: str, origin: NativeOrigin) -> None:
        self._origins[response_id] = origin

    async def native_origin(self, response_id: str) -> NativeOrigin | None:
        return self._origins.get(response_id)

    async def aclose(self) -> None:
        return None


class RedisResponseStore:
    """Shared by every process on the same Redis; Redis expires entries after ``ttl`` seconds."""

    def __init__(self, url: str, ttl: float, *, timeout: float = 0.5) -> None:
        self._ttl_ms = max(1, round(ttl * 1000))
        self._link = RedisLink(url, name="response_store", fallback="no stored responses", timeout=timeout)

    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self._run(lambda redis: redis.get(_RECORD_PREFIX + response_id))
        return StoredResponse.decode(raw) if raw is not None else None

    async def put(self, record: StoredResponse) -> None:
        await self._write(_RECORD_PREFIX + record.response["id"], record.encode())

    async def delete(self, response_id: str) -> None:
        await self._run(lambda redis: redis.delete(_RECORD_PREFIX + response_id, _ORIGIN_PREFIX + response_id))

    async def remember_native(self, response_id: str, origin: NativeOrigin) -> None:
        await self._write(_ORIGIN_PREFIX + response_id, orjson.dumps([origin.provider, origin.identity]))

    async def native_origin(self, response_id: str) -> NativeOrigin | None:
        raw = await self._run(lambda redis: redis.get(_ORIGIN_PREFIX + response_id))
        try:
            provider, identity = orjson.loads(raw) if raw is not None else (None, None)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        return NativeOrigin(provider, identity) if isinstance(provider, str) and isinstance(identity, str) else None

    async def aclose(self) -> None:
        await self._link.aclose()

    async def _write(self, key: str, value: bytes) -> None:
        await self._run(lambda redis: redis.set(key, value, px=self._ttl_ms))

    async def _run(self, command: Callable[[Redis], Awaitable[Any]]) -> Any:
        """One Redis call; None while Redis is unavailable."""
        try:
            return await self._link.run(command)
        except RedisUnavailable:
            return None


def response_store(config: Config) -> ResponseStore:
    """The store the config asks for: Redis with the Redis cache backend, else memory."""
    settings = config.responses
    if config.cache.backend == "redis":
        return RedisResponseStore(config.cache.redis_url, settings.ttl_seconds)
    return MemoryResponseStore(settings.ttl_seconds, settings.max_entries)
