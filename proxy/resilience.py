"""Retries with backoff, a circuit breaker per target, and fallback across targets.

Both are Sluice's own, a loop and a three-state machine, not tenacity and
pybreaker: every request passes through them, and the libraries cost more
than the whole wrapper does when nothing fails (``bench/micro.py``, one
core: tenacity's ``AsyncRetrying`` 25-46 µs per call, pybreaker's locked
``call`` ~1.3 µs per success; this module's whole path for one successful
attempt ~1.2 µs). Neither library fits the async call either: pybreaker
guards synchronous calls, and tenacity would own the loop that must stop
at an open breaker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy import tracing
from proxy.config import BreakerConfig, RetryConfig, Target
from proxy.errors import (
    CircuitOpen,
    SluiceError,
    UpstreamBusy,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamFailure,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    UpstreamTimeout,
)

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MAX_BREAKERS = 1000
OVERFLOW_MODEL = "other"

# uvloop's timers count whole milliseconds of a clock read at the loop's last turn, so a
# sleep may end up to ~1 ms early: Retry-After is a floor, hence the margin.
_CLOCK_MARGIN = 0.002

# Anthropic's "overloaded" status: the condition of a 503, under a name of its own.
OVERLOADED = 529


class TargetBreaker:
    """One target's breaker: closed, open, or half-open with exactly one trial request through.

    Asked before each attempt (``allow``), told its outcome after: ``failure_threshold``
    failures in a row open it for ``reset_timeout_seconds``; the first request after that
    is the trial, whose success closes it and whose failure opens it again.

    ``on_change`` hears when this process's own verdicts open or close the
    breaker, so another process can be told; states applied from elsewhere
    (``open_for``, ``close``) are not reported back, so nothing echoes.
    """

    __slots__ = ("label", "state", "_threshold", "_reset_timeout", "_failures", "_opened_at", "_trial_running", "_on_change")

    def __init__(
        self, label: str, config: BreakerConfig, on_change: Callable[[TargetBreaker], None] | None = None
    ) -> None:
        self.label = label
        self.state = CLOSED
        self._threshold = config.failure_threshold
        self._reset_timeout = config.reset_timeout_seconds
        self._failures = 0  # in a row, while closed
        self._opened_at = 0.0
        self._trial_running = False
        self._on_change = on_change

    def retry_after(self) -> float:
        return max(0.0, self._opened_at + self._reset_timeout - time.monotonic())

    def allow(self) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.retry_after() > 0:
                return False
            self.state = HALF_OPEN
        if self._trial_running:
            return False
        self._trial_running = True
        return True

    def record_success(self) -> None:
        self._trial_running = False
        if self.state == CLOSED:
            self._failures = 0
        elif self.state == HALF_OPEN:
            self._close()
            self._reported()
        # open: a call that began before the breaker opened; the open period runs its course

    def record_failure(self, error: BaseException) -> None:
        self._trial_running = False
        if self.state == OPEN:
            return  # likewise: it is already open, and reopening would extend the period
        if self.state == CLOSED:
            self._failures += 1
            if self._failures < self._threshold:
                return
        self._open(time.monotonic())
        self._reported()

    def release(self) -> None:
        """The call ended without a verdict (cancelled, or a client error): a trial's counts as a success."""
        if self.state == HALF_OPEN and self._trial_running:
            self._close()
            self._reported()
        self._trial_running = False

    def open_for(self, seconds: float) -> None:
        """Open as another process's breaker did, for the time it has left."""
        self._open(time.monotonic() - self._reset_timeout + seconds)

    def close(self) -> None:
        """Close as another process's breaker did: its trial succeeded."""
        if self.state != CLOSED:
            self._close()

    def _open(self, opened_at: float) -> None:
        self.state = OPEN
        self._opened_at = opened_at

    def _close(self) -> None:
        self.state = CLOSED
        self._failures = 0

    def _reported(self) -> None:
        """Tell ``on_change`` of an opening or a closing; half-open is a local step, not news."""
        if self._on_change is not None:
            self._on_change(self)


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
        return isinstance(error, (UpstreamConnectionError, UpstreamProtocolError, UpstreamReadTimeout))

    @staticmethod
    def is_provider_failure(error: BaseException) -> bool:
        """Client errors (4xx, 429 included) and a busy local pool say nothing about the provider's health."""
        if isinstance(error, UpstreamHTTPError):
            return error.status >= 500
        return isinstance(error, UpstreamFailure) and not isinstance(error, UpstreamBusy)

    def backoff(self, retry_number: int, error: BaseException | None) -> float:
        """Full jitter, raised to the upstream's Retry-After; both capped."""
        cap = self._retry.max_backoff_ms / 1000
        ceiling = min(cap, self._retry.initial_backoff_ms / 1000 * 2 ** (retry_number - 1))
        delay = random.uniform(0, ceiling)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after + _CLOCK_MARGIN, cap))
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
                if not self.retryable(exc) and not isinstance(exc, UpstreamBusy):
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
        """The target's attempts: retryable failures are retried after a backoff, while its breaker allows."""
        number = 1
        while True:
            try:
                return await self._once(target, breaker, attempt, attempts)
            except UpstreamFailure as exc:
                if number >= self._retry.max_attempts or not self.retryable(exc):
                    raise
                error = exc
            await asyncio.sleep(self.backoff(number, error))
            if not breaker.allow():
                raise error
            number += 1
            attempts.retries += 1

    async def _once(
        self, target: Target, breaker: TargetBreaker, attempt: Callable[[Target], Awaitable[T]], attempts: Attempts
    ) -> T:
        attempts.count += 1
        attempts.target = target
        tracer = tracing.TRACING
        if tracer is None or (span := tracer.start_attempt()) is None:  # not in a traced request
            return await self._judged(target, breaker, attempt)
        try:
            value = await self._judged(target, breaker, attempt)
        except BaseException as exc:
            tracer.end_attempt(span, target, attempts.count, None, exc)
            raise
        tracer.end_attempt(span, target, attempts.count, value, None)
        return value

    async def _judged(self, target: Target, breaker: TargetBreaker, attempt: Callable[[Target], Awaitable[T]]) -> T:
        """One attempt, its outcome told to the target's breaker."""
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
    if (isinstance(error, UpstreamHTTPError) and (error.status < 500 or error.status == OVERLOADED)) or isinstance(
        error, UpstreamBusy
    ):
        return error  # a client error, Anthropic's "overloaded" (CONTRACT §9), or no free connection here
    if isinstance(error, UpstreamFailure):
        return UpstreamError(error.message, param=error.param)
    return error
