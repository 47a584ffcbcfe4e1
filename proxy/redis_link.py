"""One way to talk to Redis for every part that uses it: the cache, shared state, dedup across replicas, stored responses.

Redis is an optimisation, never a dependency. So a link has short socket
timeouts and none of redis-py's own retries; any error or timeout becomes
``RedisUnavailable`` and its caller falls back to what it can do alone; for
``backoff`` seconds after a failure Redis is not tried at all, so an outage
costs nothing per request; an outage is logged once per ``log_interval``
(``<name>_unavailable``, then ``<name>_recovered``), with the password never
in the line. There is no "down" state: the first call after the backoff tries
again, so each part comes back by itself when Redis does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

_log = structlog.get_logger("sluice")
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer (or failed moments ago): the caller falls back to local state."""


class RedisLink:
    """One client with its backoff and outage log, for one part of Sluice.

    ``name`` names the log events, ``fallback`` says in them what serves
    meanwhile (both default to shared state's); ``timeout``: socket connect
    and read, seconds. Writes nobody waits for are ``spawn``-ed and awaited
    at ``aclose``, so a stopping process does not drop them.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "shared_state",
        fallback: str = "per-process breakers and limits",
        timeout: float = 0.25,
        backoff: float = 1.0,
        log_interval: float = 30.0,
    ) -> None:
        self.backoff = backoff
        self.where = _location(url)
        self._url = url
        self._timeout = timeout
        self.redis = self.client()
        self._password = parse_url(url).get("password")
        self._unavailable_event = f"{name}_unavailable"
        self._recovered_event = f"{name}_recovered"
        self._fallback = fallback
        self._log_interval = log_interval
        self._skip_until = 0.0  # monotonic time before which Redis is not tried
        self._logged_at = -math.inf
        self._failures = 0  # since the last warning
        self._outage_reported = False
        self._pending: set[asyncio.Task[None]] = set()

    def client(self, *, read_timeout: float | None = None, protocol: int | None = None) -> Redis:
        """A client of this link's Redis on a pool of its own: the link's, or one whose connections
        must differ (a blocking read needs a ``read_timeout`` longer than it waits)."""
        options: dict[str, Any] = {"protocol": protocol} if protocol is not None else {}
        return Redis.from_url(
            self._url,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout if read_timeout is None else read_timeout,
            retry=Retry(NoBackoff(), 0),  # none, whatever redis-py's default: the backoff decides
            **options,
        )

    async def run(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        """One Redis call; any error or timeout, or a recent failure, is ``RedisUnavailable``."""
        if time.monotonic() < self._skip_until:
            raise RedisUnavailable(f"redis at {self.where} failed less than {self.backoff}s ago")
        try:
            result = await command(self.redis)
        except (RedisError, OSError) as exc:
            self.failed(exc)
            raise RedisUnavailable(f"redis at {self.where}: {type(exc).__name__}") from exc
        if self._outage_reported:
            self.succeeded()
        return result

    def spawn(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for the spawned writes still in flight (each bounded by the socket timeout)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self.redis.aclose()

    def failed(self, exc: BaseException) -> None:
        """Count a failure seen outside ``run`` (a subscription, a blocking read) as ``run`` does."""
        now = time.monotonic()
        self._skip_until = now + self.backoff
        self._failures += 1
        if now - self._logged_at < self._log_interval:
            return
        error = f"{type(exc).__name__}: {exc}"
        if self._password:
            error = error.replace(self._password, "***")
        _log.warning(
            self._unavailable_event,
            redis=self.where,
            error=error,
            failures=self._failures,
            retry_after_s=self.backoff,
            fallback=self._fallback,
        )
        self._logged_at, self._failures, self._outage_reported = now, 0, True

    def succeeded(self) -> None:
        """Redis answered: end a reported outage."""
        if self._outage_reported:
            self._outage_reported = False
            _log.info(self._recovered_event, redis=self.where)


def _location(url: str) -> str:
    """Where Redis is, for logs and errors: host, port and db, never the credentials."""
    parts = parse_url(url)
    place = parts.get("path") or f"{parts.get('host', 'localhost')}:{parts.get('port', 6379)}"
    return f"{place}/{parts.get('db', 0)}"
