"""Breaker state across processes: each hears when another's breaker opens or closes.

Breakers cost no Redis round trip per request: ``allow()`` stays a local check.
When a process's own verdicts open a target's breaker it writes
``sluice:breaker:<provider/model>`` (value: when it opened, epoch seconds, for
operators; expiry: the time the breaker stays open) and publishes the label on
``sluice:breakers``; when its trial closes one, it deletes the key and
publishes. Every process follows the channel and applies the key as it finds
it: present, open for its remaining PTTL (Redis's clock, so hosts' clocks need
not agree); absent, closed. After each (re)subscription it applies every key
present, so a process started, or reconnected, while a breaker is open opens
it too. Each process still runs its own half-open trial.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.redis_link import RedisLink, RedisUnavailable
from proxy.resilience import Breakers, TargetBreaker

BREAKER_PREFIX = "sluice:breaker:"
BREAKER_CHANNEL = "sluice:breakers"


class BreakerSync:
    """Tells other processes when this one's breakers open or close, and applies what they tell."""

    def __init__(self, link: RedisLink, breakers: Breakers) -> None:
        self._link = link
        self._breakers = breakers
        self._follower: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._breakers.on_change = self._changed
        self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        self._breakers.on_change = None
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)

    def _changed(self, breaker: TargetBreaker) -> None:
        self._link.spawn(self._publish(breaker.label, breaker.retry_after() if breaker.state == "open" else None))

    async def _publish(self, label: str, open_for: float | None) -> None:
        key = BREAKER_PREFIX + label

        async def write(redis: Redis) -> None:
            async with redis.pipeline(transaction=True) as pipe:
                if open_for is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, f"{time.time():.3f}", px=max(1, round(open_for * 1000)))
                pipe.publish(BREAKER_CHANNEL, label)
                await pipe.execute()

        try:
            await self._link.run(write)
        except RedisUnavailable:
            pass  # the other processes judge the target by their own failures meanwhile

    async def _follow(self) -> None:
        """Subscribe, catch up with the keys present, apply each message; on any failure, wait and start over."""
        while True:
            pubsub = self._link.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(BREAKER_CHANNEL)
                await self._catch_up()
                self._link.succeeded()
                async for message in pubsub.listen():
                    await self._apply(message["data"].decode())
            except RedisUnavailable:
                pass  # a command through the link failed, and was counted there
            except (RedisError, OSError) as exc:
                self._link.failed(exc)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(self._link.backoff)

    async def _catch_up(self) -> None:
        """Open every breaker another process holds open: messages sent while away were missed."""
        async for key in self._link.redis.scan_iter(match=BREAKER_PREFIX + "*", count=1000):
            await self._apply(key.decode().removeprefix(BREAKER_PREFIX))

    async def _apply(self, label: str) -> None:
        remaining_ms = await self._link.run(lambda redis: redis.pttl(BREAKER_PREFIX + label))
        if remaining_ms > 0:
            self._breakers.by_label(label).open_for(remaining_ms / 1000)
        else:
            self._breakers.by_label(label).close()
