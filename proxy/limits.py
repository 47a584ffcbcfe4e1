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
from typing import Any

from starlette.types import Scope

from proxy.config import ApiKey, AuthConfig, is_loopback
from proxy.errors import BudgetExceeded, Forbidden, InvalidAPIKey, KeyLimited, ModelNotAllowed, RateLimited
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
        self._paced = {key.name: key for key in config.keys if key.rpm is not None or key.tpm is not None}
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
        refusal: KeyLimited | None = None
        if key.budget_usd_per_day is not None and usage.spent >= key.budget_usd_per_day:
            refusal = over_budget(key, now)
        elif key.tpm is not None and usage.token_total >= key.tpm:
            refusal = over_tpm(key, usage.tokens[0][0] + WINDOW_SECONDS - now)
        elif key.rpm is not None and len(usage.requests) >= key.rpm:
            refusal = over_rpm(key, usage.requests[0] + WINDOW_SECONDS - now)
        if refusal is not None:
            refusal.limits = self.rate_headers(key.name, now)
            raise refusal
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

    async def usage(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Each key with a limit: the limits and what the key has used of them (for /stats)."""
        now = time.time() if now is None else now
        result = {}
        for key in self._keys:
            if has_limits(key):
                usage = self._usage_of(key.name, now)
                result[key.name] = key_usage(key, len(usage.requests), usage.token_total, usage.spent)
        return result

    def rate_headers(self, name: str | None, now: float | None = None) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for a key with an rpm or tpm (none for other callers).

        Remaining is what the key's window has left; reset is when the oldest
        request (or token charge) in it leaves, i.e. when one more fits.
        """
        key = self._paced.get(name) if name is not None else None
        if key is None:
            return {}
        now = time.time() if now is None else now
        usage = self._usage_of(key.name, now)
        oldest_request = usage.requests[0] if usage.requests else None
        oldest_tokens = usage.tokens[0][0] if usage.tokens else None
        return window_headers(key, now, len(usage.requests), oldest_request, usage.token_total, oldest_tokens)

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


def key_usage(key: ApiKey, requests: int, tokens: int, spent: float) -> dict[str, Any]:
    return {
        "rpm": key.rpm,
        "tpm": key.tpm,
        "budget_usd_per_day": key.budget_usd_per_day,
        "requests_last_minute": requests,
        "tokens_last_minute": tokens,
        "spent_today_usd": round(spent, 8),
    }


def window_headers(
    key: ApiKey, now: float, requests: int, oldest_request: float | None, tokens: int, oldest_tokens: float | None
) -> dict[str, str]:
    """The headers for a key whose last 60 s hold ``requests`` and ``tokens``, the oldest of each at the given time."""
    headers = {}
    if key.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(key.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, key.rpm - requests))
        headers["x-ratelimit-reset-requests"] = reset_duration(_until_leaves(oldest_request, now))
    if key.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, key.tpm - tokens))
        headers["x-ratelimit-reset-tokens"] = reset_duration(_until_leaves(oldest_tokens, now))
    return headers


def _until_leaves(oldest: float | None, now: float) -> float:
    return 0.0 if oldest is None else oldest + WINDOW_SECONDS - now


def reset_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``250ms``, ``1s``, ``6m0s``, ``1m30.5s``."""
    seconds = round(seconds, 3)
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


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
