"""What Sluice processes share through Redis besides the cache: breaker state, key limits, the dashboard's history.

Built in ``Gateway.start`` when ``cache.backend`` is ``redis``. Redis stays an
optimisation, never a dependency, exactly as for the cache: short socket
timeouts, no retries, a backoff after each failure during which Redis is not
tried, one warning per interval; when Redis fails every process falls back to
its own in-memory breakers and limits, and picks the shared ones up again by
itself when Redis comes back.

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
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.cache.redis import _location
from proxy.config import AuthConfig, Config
from proxy.errors import KeyLimited
from proxy.limits import (
    DAY_SECONDS,
    WINDOW_SECONDS,
    Limiter,
    Principal,
    has_limits,
    key_usage,
    over_budget,
    over_rpm,
    over_tpm,
    window_headers,
)
from proxy.resilience import Breakers, TargetBreaker
from proxy.telemetry.history import COARSE, FINE, SPANS, Buckets, History

BREAKER_PREFIX = "sluice:breaker:"
BREAKER_CHANNEL = "sluice:breakers"
LIMITS_PREFIX = "sluice:limits:"
HISTORY_PREFIX = "sluice:history:"

_log = structlog.get_logger("sluice")
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer (or failed moments ago): the caller falls back to local state."""


class RedisLink:
    """One process's client for shared state, failing open as ``proxy.cache.redis.RedisCache`` does.

    ``timeout``: socket connect and read, seconds; ``backoff``: how long Redis
    is left alone after a failure; ``log_interval``: at most one warning per
    this many seconds of outage. Writes nobody waits for are ``spawn``-ed and
    awaited at ``aclose``, so a stopping process does not drop them.
    """

    def __init__(self, url: str, *, timeout: float = 0.25, backoff: float = 1.0, log_interval: float = 30.0) -> None:
        self.backoff = backoff
        self.where = _location(url)
        self.redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # none, whatever redis-py's default: the backoff decides
        )
        self._password = parse_url(url).get("password")
        self._log_interval = log_interval
        self._skip_until = 0.0  # monotonic time before which Redis is not tried
        self._logged_at = -math.inf
        self._failures = 0  # since the last warning
        self._outage_reported = False
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        """One Redis call; any error or timeout, or a recent failure, is ``RedisUnavailable``."""
        if time.monotonic() < self._skip_until:
            raise RedisUnavailable(f"redis at {self.where} failed less than {self.backoff}s ago")
        try:
            result = await command(self.redis)
        except (RedisError, OSError) as exc:
            self.failed(exc)
            raise RedisUnavailable(f"redis at {self.where}: {type(exc).__name__}") from exc
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
        now = time.monotonic()
        self._skip_until = now + self.backoff
        self._failures += 1
        if now - self._logged_at < self._log_interval:
            return
        error = f"{type(exc).__name__}: {exc}"
        if self._password:
            error = error.replace(self._password, "***")
        _log.warning(
            "shared_state_unavailable",
            redis=self.where,
            error=error,
            failures=self._failures,
            retry_after_s=self.backoff,
            fallback="per-process breakers and limits",
        )
        self._logged_at, self._failures, self._outage_reported = now, 0, True

    def succeeded(self) -> None:
        if self._outage_reported:
            self._outage_reported = False
            _log.info("shared_state_recovered", redis=self.where)


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


# KEYS: requests (zset), tokens (zset), token total, today's spend.
# ARGV: now ms, window ms, rpm, tpm, budget ('' for no such limit), this request's member.
# Returns {verdict, wait ms, then the window after it: requests, oldest request ms, tokens, oldest charge ms}:
# the verdict is 'ok', or the limit that refuses ('budget', 'tpm', 'rpm').
_ADMIT = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local horizon = now - window
local rpm, tpm, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function oldest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tonumber(first[2]) or 0
end
local function answer(verdict, wait)
  local tokens = tonumber(redis.call('GET', KEYS[3]) or 0)
  return {verdict, wait, redis.call('ZCARD', KEYS[1]), oldest(KEYS[1]), tokens, oldest(KEYS[2])}
end
if budget and tonumber(redis.call('GET', KEYS[4]) or 0) >= budget then
  return answer('budget', 0)
end
if tpm then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
  if #gone > 0 then
    local tokens = 0
    for _, member in ipairs(gone) do tokens = tokens + tonumber(string.match(member, '%d+$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
    redis.call('DECRBY', KEYS[3], tokens)
  end
  if tonumber(redis.call('GET', KEYS[3]) or 0) >= tpm then
    return answer('tpm', oldest(KEYS[2]) + window - now)
  end
end
if rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    return answer('rpm', oldest(KEYS[1]) + window - now)
  end
  redis.call('ZADD', KEYS[1], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[1], window)
end
return answer('ok', 0)
"""

# KEYS: tokens (zset), token total, today's spend (the admit script's keys but the first).
# ARGV: now ms, window ms, tokens, cost, this charge's member, the spend key's expiry (s).
_CHARGE = """
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
if tokens > 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5] .. ':' .. tokens)
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if cost > 0 then
  redis.call('INCRBYFLOAT', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
return 0
"""

_SPEND_EXPIRY_SECONDS = 2 * int(DAY_SECONDS)


class RedisLimiter(Limiter):
    """The same limits as ``Limiter``, counted in Redis so that every process and replica shares them.

    The windows are the in-memory limiter's sliding 60 s windows, not fixed
    minute buckets: a key's limits and its Retry-After mean the same with
    either backend, and there is no boundary where two minutes' worth of
    requests pass back to back. The price is one sorted-set member per
    request (rpm) or per charge (tpm) of the last minute per key, trimmed on
    each admit; the tokens' running total is kept beside its set so that a
    check never sums the window. Spend is one float per key and UTC day,
    expiring after two days.

    One atomic script per admit (budget, tpm, rpm checked, then the request
    counted) and one per charge, sent after the answer without holding it.
    Keys without limits never touch Redis. When Redis fails, that request is
    admitted or charged by the in-memory limiter instead.
    """

    def __init__(self, config: AuthConfig, link: RedisLink) -> None:
        super().__init__(config)
        self._link = link
        self._admit_script = link.redis.register_script(_ADMIT)
        self._charge_script = link.redis.register_script(_CHARGE)
        self._members = (f"{secrets.token_hex(6)}:{n}" for n in itertools.count())
        self._windows: dict[str, _Window] = {}

    async def admit(self, principal: Principal, now: float | None = None) -> None:
        key = principal.key
        if key is None or not has_limits(key):
            return
        now = time.time() if now is None else now
        args = [
            round(now * 1000),
            int(WINDOW_SECONDS * 1000),
            _limit(key.rpm),
            _limit(key.tpm),
            _limit(key.budget_usd_per_day),
            next(self._members),
        ]
        keys = _keys(key.name, now)
        try:
            verdict, wait_ms, *window = await self._link.run(lambda redis: self._admit_script(keys, args))
        except RedisUnavailable:
            self._windows.pop(key.name, None)  # the local count answers for this key meanwhile
            self.admit_locally(principal, now)
            return
        requests, oldest_request_ms, tokens, oldest_tokens_ms = window
        self._windows[key.name] = _Window(
            requests, oldest_request_ms / 1000 if requests else None, tokens, oldest_tokens_ms / 1000 if tokens else None
        )
        refusal: KeyLimited | None = None
        if verdict == b"budget":
            refusal = over_budget(key, now)
        elif verdict == b"tpm":
            refusal = over_tpm(key, wait_ms / 1000)
        elif verdict == b"rpm":
            refusal = over_rpm(key, wait_ms / 1000)
        if refusal is not None:
            refusal.limits = self.rate_headers(key.name, now)
            raise refusal

    async def usage(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """As ``Limiter.usage``, read from Redis in one round trip; this process's own count when Redis fails."""
        now = time.time() if now is None else now
        keys = [key for key in self._keys if has_limits(key)]
        horizon = round((now - WINDOW_SECONDS) * 1000)

        async def read(redis: Redis) -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    requests, tokens, _, spent = _keys(key.name, now)
                    pipe.zcount(requests, f"({horizon}", "+inf")
                    pipe.zrangebyscore(tokens, f"({horizon}", "+inf")
                    pipe.get(spent)
                return await pipe.execute()

        try:
            replies = await self._link.run(read)
        except RedisUnavailable:
            return await super().usage(now)
        result = {}
        for n, key in enumerate(keys):
            requests, charges, spent = replies[3 * n : 3 * n + 3]
            tokens = sum(int(member.rsplit(b":", 1)[1]) for member in charges)
            result[key.name] = key_usage(key, requests, tokens, float(spent or 0))
        return result

    def rate_headers(self, name: str | None, now: float | None = None) -> dict[str, str]:
        """As ``Limiter.rate_headers``, from the window as the key's last admit in this process saw it."""
        key = self._paced.get(name) if name is not None else None
        window = self._windows.get(key.name) if key is not None else None
        if window is None:
            return super().rate_headers(name, now)
        now = time.time() if now is None else now
        return window_headers(key, now, window.requests, window.oldest_request, window.tokens, window.oldest_tokens)  # type: ignore[arg-type]

    def charge(self, principal: Principal, tokens: int, cost: float, now: float | None = None) -> None:
        """Counts only what a limit reads: tokens for a tpm, spend for a budget."""
        key = principal.key
        if key is None:
            return
        tokens = tokens if key.tpm is not None else 0
        cost = cost if key.budget_usd_per_day is not None else 0.0
        if tokens <= 0 and cost <= 0:
            return
        now = time.time() if now is None else now
        window = self._windows.get(key.name)
        if window is not None and tokens:
            window.tokens += tokens
            window.oldest_tokens = window.oldest_tokens or now
        self._link.spawn(self._charge(principal, _keys(key.name, now)[1:], tokens, cost, now))

    async def _charge(self, principal: Principal, keys: list[str], tokens: int, cost: float, now: float) -> None:
        args = [round(now * 1000), int(WINDOW_SECONDS * 1000), tokens, repr(cost), next(self._members), _SPEND_EXPIRY_SECONDS]
        try:
            await self._link.run(lambda redis: self._charge_script(keys, args))
        except RedisUnavailable:
            super().charge(principal, tokens, cost, now)


@dataclass(slots=True)
class _Window:
    """A key's last 60 s as its latest admit in this process found them (for its ``x-ratelimit-*`` headers)."""

    requests: int
    oldest_request: float | None
    tokens: int
    oldest_tokens: float | None


def _keys(name: str, now: float) -> list[str]:
    """requests, tokens, token total, today's spend; ``{name}`` keeps one key's counters in one cluster slot."""
    base = f"{LIMITS_PREFIX}{{{name}}}:"
    return [base + "requests", base + "tokens", base + "token_total", f"{base}spent:{int(now // DAY_SECONDS)}"]


def _limit(value: float | None) -> str:
    return "" if value is None else repr(value)


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
