"""Proxy keys, and each key's requests-per-minute, tokens-per-minute and daily budget.

Limits are checked before the upstream call and charged after it: a request
is admitted while the key's usage so far is under its limits, so one large
request can overshoot a limit once, and the next is refused until the
window rolls over.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from dataclasses import dataclass, field

from proxy.config import ApiKey, AuthConfig
from proxy.errors import BudgetExceeded, InvalidAPIKey, RateLimited

WINDOW_SECONDS = 60.0
DAY_SECONDS = 86400.0


@dataclass(slots=True)
class Principal:
    """Who is calling: a configured key, or nobody in particular when keys are off."""

    name: str | None
    key: ApiKey | None = None


@dataclass(slots=True)
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_total: int = 0
    day: int = -1
    spent: float = 0.0


ANONYMOUS = Principal(None)


class Limiter:
    """Keys and their limits, counted in this process's memory (per process, per worker).

    ``admit`` is async so that ``proxy.shared_state.RedisLimiter`` can count
    in Redis behind the same interface; ``charge`` is not: it is bookkeeping
    after the answer, which the response never waits for.
    """

    def __init__(self, config: AuthConfig) -> None:
        self._keys = config.keys
        self._usage: dict[str, _Usage] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        if not self._keys:
            return ANONYMOUS
        token = _bearer(authorization)
        if token is None:
            raise InvalidAPIKey("Missing API key: send 'Authorization: Bearer <key>'.")
        for key in self._keys:
            if hmac.compare_digest(key.key.encode(), token.encode()):
                return Principal(key.name, key)
        raise InvalidAPIKey("Incorrect API key provided.")

    async def admit(self, principal: Principal, now: float | None = None) -> None:
        self.admit_locally(principal, now)

    def admit_locally(self, principal: Principal, now: float | None = None) -> None:
        """Sliding 60 s windows: each request and each charge leaves the window 60 s after it happened."""
        key = principal.key
        if key is None or not has_limits(key):
            return
        now = time.time() if now is None else now
        usage = self._usage_of(key.name, now)
        if key.budget_usd_per_day is not None and usage.spent >= key.budget_usd_per_day:
            raise over_budget(key, now)
        if key.tpm is not None and usage.token_total >= key.tpm:
            raise over_tpm(key, usage.tokens[0][0] + WINDOW_SECONDS - now)
        if key.rpm is not None and len(usage.requests) >= key.rpm:
            raise over_rpm(key, usage.requests[0] + WINDOW_SECONDS - now)
        usage.requests.append(now)

    def charge(self, principal: Principal, tokens: int, cost: float, now: float | None = None) -> None:
        if principal.key is None:
            return
        now = time.time() if now is None else now
        usage = self._usage_of(principal.key.name, now)
        if tokens:
            usage.tokens.append((now, tokens))
            usage.token_total += tokens
        usage.spent += cost

    def _usage_of(self, name: str, now: float) -> _Usage:
        usage = self._usage.get(name)
        if usage is None:
            usage = self._usage[name] = _Usage()
        horizon = now - WINDOW_SECONDS
        while usage.requests and usage.requests[0] <= horizon:
            usage.requests.popleft()
        while usage.tokens and usage.tokens[0][0] <= horizon:
            usage.token_total -= usage.tokens.popleft()[1]
        day = int(now // DAY_SECONDS)
        if day != usage.day:
            usage.day, usage.spent = day, 0.0
        return usage


def has_limits(key: ApiKey) -> bool:
    """Only keys with a limit are counted at all: the rest cost nothing per request."""
    return key.rpm is not None or key.tpm is not None or key.budget_usd_per_day is not None


def over_budget(key: ApiKey, now: float) -> BudgetExceeded:
    return BudgetExceeded(
        f"Key '{key.name}' has spent its daily budget of ${key.budget_usd_per_day:.2f}.",
        retry_after=DAY_SECONDS - now % DAY_SECONDS,
    )


def over_tpm(key: ApiKey, retry_after: float) -> RateLimited:
    return RateLimited(f"Key '{key.name}' reached its limit of {key.tpm} tokens per minute.", retry_after=retry_after)


def over_rpm(key: ApiKey, retry_after: float) -> RateLimited:
    return RateLimited(f"Key '{key.name}' reached its limit of {key.rpm} requests per minute.", retry_after=retry_after)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
