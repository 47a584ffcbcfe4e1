"""Retries with backoff, a circuit breaker per target, and fallback across targets.

The first attempt runs bare: tenacity costs ~50 µs per call even when nothing
fails (measured here), which is a sixth of the proxy's whole budget per
request, so it only drives the retries after a first failure.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pybreaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from proxy.config import BreakerConfig, RetryConfig, Target
from proxy.errors import (
    CircuitOpen,
    SluiceError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamFailure,
    UpstreamHTTPError,
    UpstreamReadTimeout,
    UpstreamTimeout,
)

T = TypeVar("T")

BREAKER_STATES = {"closed": "closed", "open": "open", "half-open": "half_open"}
MAX_BREAKERS = 1000
OVERFLOW_MODEL = "other"

# Anthropic's "overloaded" status: the condition of a 503, under a name of its own.
OVERLOADED = 529


class TargetBreaker(pybreaker.CircuitBreakerListener):
    """pybreaker's state machine for one target, driven around async calls.

    pybreaker guards synchronous calls; here the upstream call is async, so the
    breaker is asked before the call (``allow``) and told the outcome after.
    Half-open lets exactly one trial request through.

    ``on_change`` hears when this process's own verdicts open or close the
    breaker, so another process can be told; states applied from elsewhere
    (``open_for``, ``close``) are not reported back, so nothing echoes.
    """

    def __init__(
        self, label: str, config: BreakerConfig, on_change: Callable[[TargetBreaker], None] | None = None
    ) -> None:
        self.label = label
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold, reset_timeout=config.reset_timeout_seconds, listeners=[self], name=label
        )
        self._reset_timeout = config.reset_timeout_seconds
        self._opened_at = 0.0
        self._trial_running = False
        self._on_change = on_change

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state, new_state) -> None:  # type: ignore[no-untyped-def]
        if new_state is not None and new_state.name == pybreaker.STATE_OPEN:
            self._opened_at = time.monotonic()

    @property
    def state(self) -> str:
        return BREAKER_STATES.get(self._breaker.current_state, self._breaker.current_state)

    def retry_after(self) -> float:
        return max(0.0, self._opened_at + self._reset_timeout - time.monotonic())

    def allow(self) -> bool:
        state = self._breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return True
        if state == pybreaker.STATE_OPEN:
            if self.retry_after() > 0:
                return False
            self._breaker.half_open()
        if self._trial_running:
            return False
        self._trial_running = True
        return True

    def record_success(self) -> None:
        self._trial_running = False
        before = self._breaker.current_state
        if before == pybreaker.STATE_OPEN:
            return  # a call that began before the breaker opened: the open period runs its course
        if before == pybreaker.STATE_CLOSED and self._breaker.fail_counter == 0:
            return  # nothing to reset: skip pybreaker's locked call on the hot path
        self._breaker.call(_succeed)
        self._reported(before)

    def record_failure(self, error: BaseException) -> None:
        self._trial_running = False
        before = self._breaker.current_state
        if before == pybreaker.STATE_OPEN:
            return  # likewise: it is already open, and reopening would extend the period
        try:
            self._breaker.call(_fail, error)
        except (pybreaker.CircuitBreakerError, SluiceError):
            pass
        self._reported(before)

    def release(self) -> None:
        """The call ended without a verdict (cancelled, or a client error)."""
        if self._breaker.current_state == pybreaker.STATE_HALF_OPEN and self._trial_running:
            self._trial_running = False
            self._breaker.call(_succeed)
            self._reported(pybreaker.STATE_HALF_OPEN)
        self._trial_running = False

    def open_for(self, seconds: float) -> None:
        """Open as another process's breaker did, for the time it has left.

        ``_opened_at`` is back-dated so that ``retry_after`` is ``seconds``;
        pybreaker's own clock never decides anything here, ``allow`` does.
        """
        if self._breaker.current_state != pybreaker.STATE_OPEN:
            self._breaker.open()
        self._opened_at = time.monotonic() - self._reset_timeout + seconds

    def close(self) -> None:
        """Close as another process's breaker did: its trial succeeded."""
        if self._breaker.current_state != pybreaker.STATE_CLOSED:
            self._breaker.close()

    def _reported(self, before: str) -> None:
        """Tell ``on_change`` of an opening or a closing; half-open is a local step, not news."""
        after = self._breaker.current_state
        if after != before and after != pybreaker.STATE_HALF_OPEN and self._on_change is not None:
            self._on_change(self)


def _succeed() -> None:
    return None


def _fail(error: BaseException) -> None:
    raise error


class Breakers:
    """One breaker per provider/upstream model, created on first use.

    A client picks the model, so the number of breakers is bounded: past
    ``limit``, targets no alias names share one ``provider/other`` breaker per
    provider, while alias targets (``known``) always get their own.

    ``on_change``, when set, hears every breaker that this process's own
    verdicts opened or closed (``proxy.shared_state`` tells the others).
    """

    def __init__(self, config: BreakerConfig, known: frozenset[Target] = frozenset(), limit: int = MAX_BREAKERS) -> None:
        self._config = config
        self._known = known
        self._limit = limit
        self._breakers: dict[Target, TargetBreaker] = {}
        self.on_change: Callable[[TargetBreaker], None] | None = None

    def get(self, target: Target) -> TargetBreaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            if len(self._breakers) >= self._limit and target not in self._known:
                target = Target(target.provider, OVERFLOW_MODEL)
                breaker = self._breakers.get(target)
            if breaker is None:
                breaker = self._breakers[target] = TargetBreaker(target.label, self._config, self._changed)
        return breaker

    def by_label(self, label: str) -> TargetBreaker:
        """The breaker for ``provider/model``, created if this process has not used that target yet."""
        provider, _, model = label.partition("/")
        return self.get(Target(provider, model))

    def states(self) -> dict[str, str]:
        return {b.label: b.state for b in self._breakers.values()}

    def _changed(self, breaker: TargetBreaker) -> None:
        if self.on_change is not None:
            self.on_change(breaker)


@dataclass(slots=True)
class Result(Generic[T]):
    value: T
    target: Target


class Attempts:
    """Counts upstream attempts across targets, for ``X-Sluice-Attempts``; ``target`` is the
    last one tried, so a failure is attributed to the target that failed it."""

    __slots__ = ("count", "retries", "fallbacks", "target")

    def __init__(self) -> None:
        self.count = 0
        self.retries = 0
        self.fallbacks = 0
        self.target: Target | None = None


class Resilience:
    def __init__(self, retry: RetryConfig, breakers: Breakers) -> None:
        self._retry = retry
        self._retry_statuses = _retry_statuses(retry.retry_on_status)
        self.breakers = breakers

    def retryable(self, error: BaseException) -> bool:
        if isinstance(error, UpstreamHTTPError):
            return error.status in self._retry_statuses
        return isinstance(error, (UpstreamConnectionError, UpstreamReadTimeout))

    @staticmethod
    def is_provider_failure(error: BaseException) -> bool:
        """Client errors (4xx, 429 included) say nothing about the provider's health."""
        if isinstance(error, UpstreamHTTPError):
            return error.status >= 500
        return isinstance(error, UpstreamFailure)

    def backoff(self, retry_number: int, error: BaseException | None) -> float:
        """Full jitter, raised to the upstream's Retry-After; both capped."""
        cap = self._retry.max_backoff_ms / 1000
        ceiling = min(cap, self._retry.initial_backoff_ms / 1000 * 2 ** (retry_number - 1))
        delay = random.uniform(0, ceiling)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return delay

    async def run(
        self, targets: tuple[Target, ...], attempt: Callable[[Target], Awaitable[T]], attempts: Attempts
    ) -> Result[T]:
        """Try each target in order; a target's retries are spent before the next."""
        last_error: SluiceError | None = None
        skipped: list[TargetBreaker] = []
        for position, target in enumerate(targets):
            breaker = self.breakers.get(target)
            if not breaker.allow():
                skipped.append(breaker)
                continue
            if position and attempts.count:
                attempts.fallbacks += 1
            try:
                value = await self._with_retries(target, breaker, attempt, attempts)
            except UpstreamFailure as exc:
                last_error = exc
                if not self.retryable(exc):
                    raise _final(exc) from None
                continue
            return Result(value, target)
        if last_error is None:
            retry_after = min(b.retry_after() for b in skipped) if skipped else None
            names = ", ".join(b.label for b in skipped)
            raise CircuitOpen(f"Circuit breaker open for {names}; try again later.", retry_after=retry_after)
        raise _final(last_error)

    async def _with_retries(
        self, target: Target, breaker: TargetBreaker, attempt: Callable[[Target], Awaitable[T]], attempts: Attempts
    ) -> T:
        try:
            return await self._once(target, breaker, attempt, attempts)
        except UpstreamFailure as exc:
            if self._retry.max_attempts <= 1 or not self.retryable(exc):
                raise
            first_error = exc
        await asyncio.sleep(self.backoff(1, first_error))

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.backoff(state.attempt_number + 1, error)

        async def retry_once() -> T:
            if not breaker.allow():
                raise first_error
            attempts.retries += 1
            return await self._once(target, breaker, attempt, attempts)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.max_attempts - 1),
            wait=wait,
            retry=retry_if_exception(self.retryable),
            reraise=True,
        )
        return await retrying(retry_once)

    async def _once(
        self, target: Target, breaker: TargetBreaker, attempt: Callable[[Target], Awaitable[T]], attempts: Attempts
    ) -> T:
        attempts.count += 1
        attempts.target = target
        try:
            value = await attempt(target)
        except UpstreamFailure as exc:
            if self.is_provider_failure(exc):
                breaker.record_failure(exc)
            else:
                breaker.release()
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.record_success()
        return value


def _retry_statuses(configured: tuple[int, ...]) -> frozenset[int]:
    """The configured statuses, plus 529 whenever 503 is there: operators list the standard codes."""
    statuses = set(configured)
    if 503 in statuses:
        statuses.add(OVERLOADED)
    return frozenset(statuses)


def _final(error: SluiceError) -> SluiceError:
    """What the client sees once every attempt and target failed."""
    if isinstance(error, UpstreamReadTimeout):
        return UpstreamTimeout(f"The upstream timed out after every attempt: {error.message}")
    if isinstance(error, UpstreamHTTPError) and (error.status < 500 or error.status == OVERLOADED):
        return error  # a client error, or Anthropic's "overloaded", which its clients know how to wait out (CONTRACT §9)
    if isinstance(error, UpstreamFailure):
        return UpstreamError(error.message, param=error.param)
    return error
