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
skipped (and logged).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.config import Config

_log = structlog.get_logger("sluice")
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


class _Expiring:
    """An LRU map whose entries also expire."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: Any) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)


class MemoryResponseStore:
    """Per process: LRU-bounded to ``max_entries``, each entry kept ``ttl`` seconds."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._records = _Expiring(ttl, max_entries)
        self._origins = _Expiring(ttl, max_entries)

    async def get(self, response_id: str) -> StoredResponse | None:
        return self._records.get(response_id)

    async def put(self, record: StoredResponse) -> None:
        self._records.put(record.response["id"], record)

    async def delete(self, response_id: str) -> None:
        self._records.pop(response_id)
        self._origins.pop(response_id)

    async def remember_native(self, response_id: str, origin: NativeOrigin) -> None:
        self._origins.put(response_id, origin)

    async def native_origin(self, response_id: str) -> NativeOrigin | None:
        return self._origins.get(response_id)

    async def aclose(self) -> None:
        return None


class RedisResponseStore:
    """Shared by every process on the same Redis; Redis expires entries after ``ttl`` seconds."""

    def __init__(self, url: str, ttl: float, *, timeout: float = 0.5) -> None:
        self._ttl_ms = max(1, round(ttl * 1000))
        self._redis = Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self._read(_RECORD_PREFIX + response_id)
        return StoredResponse.decode(raw) if raw is not None else None

    async def put(self, record: StoredResponse) -> None:
        await self._write(_RECORD_PREFIX + record.response["id"], record.encode())

    async def delete(self, response_id: str) -> None:
        try:
            await self._redis.delete(_RECORD_PREFIX + response_id, _ORIGIN_PREFIX + response_id)
        except (RedisError, OSError) as exc:
            _log.warning("response_store_unavailable", operation="delete", error=type(exc).__name__)

    async def remember_native(self, response_id: str, origin: NativeOrigin) -> None:
        await self._write(_ORIGIN_PREFIX + response_id, orjson.dumps([origin.provider, origin.identity]))

    async def native_origin(self, response_id: str) -> NativeOrigin | None:
        raw = await self._read(_ORIGIN_PREFIX + response_id)
        try:
            provider, identity = orjson.loads(raw) if raw is not None else (None, None)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        return NativeOrigin(provider, identity) if isinstance(provider, str) and isinstance(identity, str) else None

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _read(self, key: str) -> bytes | None:
        try:
            return await self._redis.get(key)
        except (RedisError, OSError) as exc:
            _log.warning("response_store_unavailable", operation="get", error=type(exc).__name__)
            return None

    async def _write(self, key: str, value: bytes) -> None:
        try:
            await self._redis.set(key, value, px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            _log.warning("response_store_unavailable", operation="set", error=type(exc).__name__)


def response_store(config: Config) -> ResponseStore:
    """The store the config asks for: Redis with the Redis cache backend, else memory."""
    settings = config.responses
    if config.cache.backend == "redis":
        return RedisResponseStore(config.cache.redis_url, settings.ttl_seconds)
    return MemoryResponseStore(settings.ttl_seconds, settings.max_entries)
