"""What Sluice processes share through Redis besides the cache: breaker state, key limits, the dashboard's history.

Built in ``Gateway.start`` when ``cache.backend`` is ``redis``, on one
``RedisLink`` (``proxy.redis_link``): when Redis fails every process falls
back to its own in-memory breakers and limits, and picks the shared ones up
again by itself when Redis comes back.

- ``breakers.py``: breakers opened and closed in one process, applied in all;
- ``limiter.py``: rpm, tpm and budget counted in Redis;
- ``history.py``: each process's dashboard history, read by every other.
"""

from __future__ import annotations

from proxy.config import Config
from proxy.redis_link import RedisLink
from proxy.resilience import Breakers
from proxy.shared_state.breakers import BREAKER_PREFIX, BreakerSync
from proxy.shared_state.history import SharedHistory
from proxy.shared_state.limiter import LIMITS_PREFIX, RedisLimiter
from proxy.telemetry.history import History

__all__ = ["BREAKER_PREFIX", "LIMITS_PREFIX", "BreakerSync", "RedisLimiter", "RedisLink", "SharedHistory", "SharedState"]


class SharedState:
    """The Redis link, the shared limiter, the breaker sync and the shared history: what ``Gateway`` starts and stops."""

    def __init__(self, config: Config, breakers: Breakers, history: History) -> None:
        self.link = RedisLink(config.cache.redis_url)
        self.limiter = RedisLimiter(config.auth, self.link)
        self.breaker_sync = BreakerSync(self.link, breakers)
        self.history = SharedHistory(self.link, history)

    def start(self) -> None:
        self.breaker_sync.start()
        self.history.start()

    async def aclose(self) -> None:
        await self.breaker_sync.stop()
        await self.history.stop()
        await self.link.aclose()
