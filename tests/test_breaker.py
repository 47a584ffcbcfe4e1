"""The breaker's state machine and the retry loop around it (proxy/resilience.py), without a server.

The end-to-end behaviour (fail fast, half-open, close; across processes) is in
tests/test_resilience.py and tests/test_shared_redis.py.
"""

from __future__ import annotations

import pytest

from proxy.config import BreakerConfig, RetryConfig, Target
from proxy.errors import CircuitOpen, UpstreamHTTPError
from proxy.resilience import Attempts, Breakers, Resilience, TargetBreaker

TARGET, FALLBACK = Target("openai", "gpt-4o-mini"), Target("anthropic", "claude")
FAST_RETRIES = RetryConfig(max_attempts=3, initial_backoff_ms=0.1, max_backoff_ms=0.1)


def breaker(threshold: int = 2) -> tuple[TargetBreaker, list[str]]:
    told: list[str] = []
    return TargetBreaker("openai/m", BreakerConfig(threshold, 30), lambda b: told.append(b.state)), told


def failure() -> UpstreamHTTPError:
    return UpstreamHTTPError(503, "unavailable")


def test_failures_in_a_row_open_it_and_a_success_between_resets_the_count() -> None:
    b, told = breaker(threshold=2)
    b.record_failure(failure())
    b.record_success()
    b.record_failure(failure())
    assert b.state == "closed" and b.allow()
    b.record_failure(failure())
    assert b.state == "open" and not b.allow() and 29 < b.retry_after() <= 30
    assert told == ["open"]


def test_half_open_lets_one_trial_through_whose_failure_opens_it_again() -> None:
    b, told = breaker(threshold=1)
    b.record_failure(failure())
    b.open_for(0)  # the open period is over
    assert b.allow() and b.state == "half_open"
    assert not b.allow(), "one trial at a time"
    b.record_failure(failure())
    assert b.state == "open" and b.retry_after() > 29
    assert told == ["open", "open"]


def test_a_trial_without_a_verdict_closes_it_as_a_success_does() -> None:
    b, told = breaker(threshold=1)
    b.record_failure(failure())
    b.open_for(0)
    assert b.allow()
    b.release()
    assert b.state == "closed" and told == ["open", "closed"]


def test_verdicts_on_an_open_breaker_change_nothing() -> None:
    b, told = breaker(threshold=1)
    b.record_failure(failure())
    b.open_for(5)
    b.record_success()
    b.record_failure(failure())
    assert b.state == "open" and 4 < b.retry_after() <= 5 and told == ["open"]


def test_states_applied_from_elsewhere_are_not_reported_back() -> None:
    b, told = breaker()
    b.open_for(10)
    assert b.state == "open" and not b.allow()
    b.close()
    assert b.state == "closed" and b.allow() and told == []


async def test_retries_stop_when_the_breaker_opens_and_the_next_target_answers() -> None:
    resilience = Resilience(FAST_RETRIES, Breakers(BreakerConfig(2, 30)))
    calls: list[Target] = []

    async def attempt(target: Target) -> str:
        calls.append(target)
        if target == TARGET:
            raise failure()
        return "answer"

    attempts = Attempts()
    result = await resilience.run((TARGET, FALLBACK), attempt, attempts)
    assert (result.value, result.target) == ("answer", FALLBACK)
    assert calls == [TARGET, TARGET, FALLBACK], "the third attempt is not made once two failures opened the breaker"
    assert (attempts.count, attempts.retries, attempts.fallbacks) == (3, 1, 1)


async def test_with_every_breaker_open_the_answer_is_circuit_open() -> None:
    resilience = Resilience(FAST_RETRIES, Breakers(BreakerConfig(1, 30)))
    resilience.breakers.get(TARGET).open_for(7)

    async def attempt(target: Target) -> str:
        raise AssertionError("an open breaker's target is not called")

    with pytest.raises(CircuitOpen) as refused:
        await resilience.run((TARGET,), attempt, Attempts())
    assert 6 < refused.value.retry_after <= 7  # type: ignore[operator]
