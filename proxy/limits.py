"""Proxy keys: who may call, which models each key may use, its requests-per-minute,
tokens-per-minute and daily budget; and who may use the admin endpoints.

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

from starlette.types import Scope

from proxy.config import ApiKey, AuthConfig, is_loopback
from proxy.errors import BudgetExceeded, Forbidden, InvalidAPIKey, ModelNotAllowed, RateLimited
from proxy.providers.base import bearer_token
from proxy.requests import read_headers

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

    def authenticate(self, credential: str | None) -> Principal:
        """The key behind ``credential``: an ``Authorization`` value or an ``x-api-key`` one."""
        if not self._keys:
            return ANONYMOUS
        token = bearer_token(credential)
        if token is None:
            raise InvalidAPIKey("Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
        for key in self._keys:
            if hmac.compare_digest(key.key.encode(), token.encode()):
                return Principal(key.name, key)
        raise InvalidAPIKey("Incorrect API key provided.")

    @staticmethod
    def check_model(principal: Principal, model: str) -> None:
        """Refuse a model outside the key's allow-list, matched against the model as the client sent it:
        an alias or ``provider/model`` by name, or any model of a ``provider/*``."""
        key = principal.key
        if key is None or key.models is None or model in key.models:
            return
        prefix, slash, _ = model.partition("/")
        if slash and f"{prefix}/*" in key.models:
            return
        raise ModelNotAllowed(f"The key '{key.name}' may not use the model '{model}'.", param="model")

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


class AdminGuard:
    """Who may clear the cache and read ``/stats`` and ``/dashboard`` (key names, spend).

    With an ``admin_key``, whoever sends it; without one, only clients on this
    machine (CONTRACT §4, §6 "Exposure").
    """

    def __init__(self, admin_key: str) -> None:
        self._key = admin_key.encode()

    def check(self, scope: Scope) -> None:
        if self._key:
            token = bearer_token(read_headers(scope).credential)
            if token is None or not hmac.compare_digest(token.encode(), self._key):
                raise InvalidAPIKey("This endpoint needs the admin key: 'Authorization: Bearer <admin_key>'.")
            return
        client = scope.get("client")
        if not client or not is_loopback(str(client[0])):
            raise Forbidden("With no auth.admin_key set, this endpoint answers only clients on the same machine.")
