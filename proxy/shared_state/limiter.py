"""Key limits (rpm, tpm, daily budget) counted in Redis, so that every process and replica shares them."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from proxy.config import AuthConfig
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
from proxy.redis_link import RedisLink, RedisUnavailable

LIMITS_PREFIX = "sluice:limits:"

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
