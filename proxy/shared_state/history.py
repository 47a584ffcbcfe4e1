"""The dashboard's history across processes, through Redis."""

from __future__ import annotations

import asyncio
import secrets

import orjson
from redis.asyncio import Redis

from proxy.redis_link import RedisLink, RedisUnavailable
from proxy.telemetry.history import COARSE, FINE, SPANS, Buckets, History

HISTORY_PREFIX = "sluice:history:"


class SharedHistory:
    """The dashboard's history of every process: each writes its own buckets, readers add them up.

    Every ``FINE`` seconds a process writes all its buckets to one key of its
    own (``sluice:history:<process>``), expiring a day later: no process ever
    changes another's, so there is nothing to lock, and a stopped process's
    last hours stay readable until they would have left the history anyway.
    """

    def __init__(self, link: RedisLink, history: History) -> None:
        self._link = link
        self._history = history
        self._key = HISTORY_PREFIX + secrets.token_hex(8)
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_every_interval())

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.write()  # the last bucket, for the processes that go on

    async def write(self) -> None:
        data = orjson.dumps({str(seconds): buckets for seconds, buckets in self._history.buckets().items()}, option=orjson.OPT_NON_STR_KEYS)
        try:
            await self._link.run(lambda redis: redis.set(self._key, data, ex=SPANS[COARSE]))
        except RedisUnavailable:
            pass  # written again at the next interval

    async def others(self) -> list[dict[int, Buckets]]:
        """Every other process's buckets; none when Redis fails (this process's own still answer)."""

        async def read(redis: Redis) -> list[bytes | None]:
            keys = [key async for key in redis.scan_iter(match=HISTORY_PREFIX + "*", count=1000) if key.decode() != self._key]
            return await redis.mget(keys) if keys else []

        try:
            values = await self._link.run(read)
        except RedisUnavailable:
            return []
        return [
            {int(seconds): {int(start): bucket for start, bucket in buckets.items()} for seconds, buckets in orjson.loads(value).items()}
            for value in values
            if value is not None
        ]

    async def _write_every_interval(self) -> None:
        while True:
            await asyncio.sleep(FINE)
            await self.write()
