"""The shared cache: Redis, so every Sluice process and worker answers from the same entries.

Redis is an optimisation, never a dependency: the cache's ``RedisLink``
(``proxy.redis_link``: short timeouts, a backoff, one warning per outage)
turns any failure into ``CacheUnavailable``, and the request goes upstream
uncached (``X-Sluice-Cache: bypass``).

An entry is ``sluice:cache:<request hash>`` → ``<n>:<provider><body>`` (``n``
the provider name's length in bytes), expired by Redis itself (``SET ... PX``)
so a TTL holds for every process that reads it.

Once started, each process keeps a near copy of what it read
(``proxy.cache.near``), dropped key by key as Redis reports changes on a
connection of its own (``CLIENT TRACKING`` in broadcast mode on Sluice's
prefix, redirected to a subscriber of ``__redis__:invalidate``). A hit on
the near copy costs no round trip, and the hit lane can serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from proxy.cache.base import CacheBackend, CachedAnswer, CacheUnavailable
from proxy.cache.near import NearCache
from proxy.completions import Completion
from proxy.redis_link import RedisLink, RedisUnavailable

KEY_PREFIX = "sluice:cache:"
INVALIDATIONS = "__redis__:invalidate"
HEARTBEAT = 0.5  # seconds of quiet before the invalidation connection is pinged; as long again for the answer
_MATCH = KEY_PREFIX + "*"
_SCAN_COUNT = 1000  # keys per SCAN page, and so per UNLINK in clear()
_ENTRIES_MAX_AGE = 5.0  # seconds: counting walks the keyspace, and the dashboard polls /stats every 2 s

_log = structlog.get_logger("sluice")
T = TypeVar("T")


class RedisCache(CacheBackend):
    """``timeout``: socket connect and read, seconds; ``backoff``: how long Redis is left alone
    after a failure; ``log_interval``: at most one warning per this many seconds of outage;
    ``near``: the near copy's bounds, entries and bytes (``proxy.cache.near``), which
    ``start`` turns on; None for no near copy."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        backoff: float = 1.0,
        log_interval: float = 30.0,
        near: tuple[int, int] | None = (10_000, 256 * 1024 * 1024),
    ) -> None:
        self._link = RedisLink(
            url, name="cache", fallback="uncached", timeout=timeout, backoff=backoff, log_interval=log_interval
        )
        self._entries: tuple[float, int] | None = None  # (when counted, count)
        self._near_copy = near is not None
        self.near = NearCache(*(near or (0, 0)))  # never live without a follower
        self._follower: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._near_copy:
            self._follower = asyncio.get_running_loop().create_task(self._follow_invalidations())

    async def get(self, key: str) -> CachedAnswer | None:
        near = self.near
        answer = near.get(key)
        if answer is not None:
            return answer
        if not near.live:
            value = await self._run(lambda redis: redis.get(KEY_PREFIX + key))
            return _decode(value) if value is not None else None
        epoch = near.epoch
        value, ttl_ms = await self._run(lambda redis: _get_with_ttl(redis, KEY_PREFIX + key))
        answer = _decode(value) if value is not None else None
        if answer is not None:
            near.keep(key, answer, ttl_ms, epoch)
        return answer

    def get_nowait(self, key: str) -> CachedAnswer | None:
        return self.near.get(key)

    async def set(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        value = _encode(answer)
        self.near.invalidate((key,))  # this process reads its own write from now on, not after Redis says so
        await self._run(lambda redis: redis.set(KEY_PREFIX + key, value, px=max(1, round(ttl * 1000))))

    async def clear(self) -> int:
        """Unlink Sluice's keys page by page; other keys in the same database stay."""
        self._entries = None
        self.near.invalidate(None)
        return await self._run(_unlink_all)

    async def entries(self) -> int:
        now = time.monotonic()
        if self._entries is None or now - self._entries[0] > _ENTRIES_MAX_AGE:
            self._entries = (now, await self._run(_count_all))
        return self._entries[1]

    async def aclose(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        await self._link.aclose()

    async def _follow_invalidations(self) -> None:
        """One connection that hears Redis name every changed cache key; the near copy lives while it does."""
        # RESP2 (pub/sub replies as plain arrays), on a pool of its own: redis-py's RESP3
        # connections consume pushed messages themselves.
        client = self._link.client(protocol=2)
        try:
            await self._follow_on(client)
        finally:
            await client.aclose()

    async def _follow_on(self, client: Redis) -> None:
        while True:
            connection = client.connection_pool.make_connection()
            try:
                await connection.connect()
                await connection.send_command("CLIENT", "ID")
                client_id = await connection.read_response()
                await connection.send_command(
                    "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", KEY_PREFIX
                )
                await connection.read_response()
                await connection.send_command("SUBSCRIBE", INVALIDATIONS)
                await connection.read_response()
                self.near.reset(live=True)
                await self._listen(connection)
            except ResponseError as exc:  # no client tracking here (Redis before 6, or an ACL): no near copy
                _log.info("cache_near_copy_off", backend="redis", redis=self._link.where, reason=str(exc))
                return
            except (RedisError, OSError):
                pass  # an outage: the cache's own calls notice and report it
            finally:
                self.near.reset(live=False)
                await connection.disconnect()
            await asyncio.sleep(self._link.backoff)

    async def _listen(self, connection: Connection) -> None:
        """Apply each invalidation; a quiet connection is pinged, and one that stays quiet is given up."""
        pinged = False
        while True:
            message = await connection.read_response(timeout=HEARTBEAT)
            if message is None:
                if pinged:
                    raise TimeoutError("redis did not answer a ping on the invalidation connection")
                await connection.send_command("PING")
                pinged = True
                continue
            pinged = False
            if message[0] == b"message":
                keys = message[2]
                self.near.invalidate(
                    None if keys is None else [key.decode().removeprefix(KEY_PREFIX) for key in keys]
                )

    async def _run(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        """One Redis call, failing open: any error or timeout is ``CacheUnavailable``."""
        try:
            return await self._link.run(command)
        except RedisUnavailable as exc:
            raise CacheUnavailable(str(exc)) from exc


async def _get_with_ttl(redis: Redis, key: str) -> tuple[bytes | None, int]:
    """The value and its remaining milliseconds, read together."""
    async with redis.pipeline(transaction=True) as pipe:
        value, ttl_ms = await pipe.get(key).pttl(key).execute()
    return value, ttl_ms


async def _unlink_all(redis: Redis) -> int:
    cursor, cleared = 0, 0
    while True:
        cursor, keys = await redis.scan(cursor, match=_MATCH, count=_SCAN_COUNT)
        if keys:
            cleared += await redis.unlink(*keys)
        if cursor == 0:
            return cleared


async def _count_all(redis: Redis) -> int:
    cursor, count = 0, 0
    while True:
        cursor, keys = await redis.scan(cursor, match=_MATCH, count=_SCAN_COUNT)
        count += len(keys)
        if cursor == 0:
            return count


def _encode(answer: CachedAnswer) -> bytes:
    provider = answer.provider.encode()
    return b"%d:%b%b" % (len(provider), provider, answer.completion.body)


def _decode(value: bytes) -> CachedAnswer | None:
    """The stored answer, or None (a miss, then overwritten) for a value this code did not write."""
    head, _, rest = value.partition(b":")
    if not head.isdigit():
        return None
    size = int(head)
    body = rest[size:]
    try:
        provider = rest[:size].decode()
        data = orjson.loads(body)
    except ValueError:  # UnicodeDecodeError and orjson.JSONDecodeError both are
        return None
    if not isinstance(data, dict):
        return None
    return CachedAnswer(Completion(body, data), provider)
