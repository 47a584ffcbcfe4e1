"""Breaker state and key limits shared through Redis: the scripts and the sync, then through real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from proxy.config import ApiKey, AuthConfig, BreakerConfig, Target
from proxy.errors import BudgetExceeded, RateLimited, UpstreamHTTPError
from proxy.limits import DAY_SECONDS, Limiter, Principal
from proxy.resilience import Breakers
from proxy.shared_state import BREAKER_PREFIX, LIMITS_PREFIX, BreakerSync, RedisLimiter, RedisLink
from tests.conftest import openai_config
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import Reply
from tests.proxy_process import ProxyProcess
from tests.redis_server import RedisServer, redis_server  # noqa: F401

LABEL = "openai/gpt-4o-mini"
FAILURE = UpstreamHTTPError(500, "upstream trouble")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(0.02)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:  # noqa: F811
    link = RedisLink(redis_server.url, backoff=0.05)
    yield link
    await link.aclose()


def principal(**limits: Any) -> Principal:
    return Principal("team-a", ApiKey("team-a", "sk-team-a", **limits))


# -- the limit scripts, side by side with the in-memory limiter: same limits, same Retry-After --

Limiters = Callable[[Principal], Awaitable[Limiter]]


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest, link: RedisLink) -> Limiters:
    async def make(who: Principal) -> Limiter:
        auth = AuthConfig(keys=(who.key,))  # type: ignore[arg-type]
        return RedisLimiter(auth, link) if request.param == "redis" else Limiter(auth)

    return make


async def charge(limiter: Limiter, link: RedisLink, who: Principal, tokens: int, cost: float, now: float) -> None:
    limiter.charge(who, tokens, cost, now)
    await link.drain()  # the Redis charge is written after the answer, in the background


async def test_rpm_is_a_sliding_window(make_limiter: Limiters) -> None:
    who = principal(rpm=2)
    limiter, t = await make_limiter(who), time.time()
    await limiter.admit(who, t)
    await limiter.admit(who, t + 10)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(who, t + 20)
    assert refused.value.retry_after == pytest.approx(40, abs=0.01), "until the oldest request leaves the window"
    await limiter.admit(who, t + 60)  # the first request has left the window
    with pytest.raises(RateLimited):
        await limiter.admit(who, t + 61)


async def test_tpm_counts_charged_tokens_of_the_last_minute(make_limiter: Limiters, link: RedisLink) -> None:
    who = principal(tpm=30)
    limiter, t = await make_limiter(who), time.time()
    await charge(limiter, link, who, 20, 0.0, t)
    await charge(limiter, link, who, 15, 0.0, t + 10)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(who, t + 20)
    assert refused.value.retry_after == pytest.approx(40, abs=0.01)
    await limiter.admit(who, t + 60)  # 20 tokens have left the window, 15 remain
    await charge(limiter, link, who, 15, 0.0, t + 61)
    with pytest.raises(RateLimited):
        await limiter.admit(who, t + 62)


async def test_daily_budget_resets_at_utc_midnight(make_limiter: Limiters, link: RedisLink) -> None:
    who = principal(budget_usd_per_day=1.0)
    limiter, t = await make_limiter(who), time.time()
    await limiter.admit(who, t)
    await charge(limiter, link, who, 100, 0.6, t)
    await limiter.admit(who, t + 1)
    await charge(limiter, link, who, 100, 0.6, t + 1)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, t + 2)
    assert refused.value.retry_after == pytest.approx(DAY_SECONDS - (t + 2) % DAY_SECONDS)
    await limiter.admit(who, t + DAY_SECONDS)


async def test_counters_expire_by_themselves(link: RedisLink, redis_server: RedisServer) -> None:  # noqa: F811
    who = principal(rpm=5, tpm=1000, budget_usd_per_day=10.0)
    limiter = RedisLimiter(AuthConfig(keys=(who.key,)), link)  # type: ignore[arg-type]
    await limiter.admit(who)
    await charge(limiter, link, who, 42, 0.25, time.time())
    plain = redis_server.client()
    keys = {k.decode(): plain.pttl(k) for k in plain.scan_iter(LIMITS_PREFIX + "*")}
    spent = next(k for k in keys if ":spent:" in k)
    assert 0 < keys.pop(spent) <= 2 * DAY_SECONDS * 1000
    assert len(keys) == 3 and all(0 < ttl <= 60_000 for ttl in keys.values()), keys
    assert float(plain.get(spent)) == pytest.approx(0.25)
    assert int(plain.get(LIMITS_PREFIX + "{team-a}:token_total")) == 42


async def test_unlimited_keys_and_no_keys_never_touch_redis(link: RedisLink, monkeypatch: pytest.MonkeyPatch) -> None:
    async def untouchable(command: object) -> None:
        raise AssertionError("Redis was called")

    monkeypatch.setattr(link, "run", untouchable)
    free, rpm_only = Principal("free", ApiKey("free", "sk-free")), principal(rpm=5)
    limiter = RedisLimiter(AuthConfig(keys=(free.key, rpm_only.key)), link)  # type: ignore[arg-type]
    for who in (Principal(None), free):
        await limiter.admit(who)
        limiter.charge(who, 100, 1.0)
    limiter.charge(rpm_only, 100, 1.0)  # nothing a limit of this key reads
    await link.drain()


async def test_redis_down_falls_back_to_local_limits_at_once(link: RedisLink, redis_server: RedisServer) -> None:  # noqa: F811
    who = principal(rpm=2)
    limiter = RedisLimiter(AuthConfig(keys=(who.key,)), link)  # type: ignore[arg-type]
    await limiter.admit(who)
    redis_server.stop()
    started = time.perf_counter()
    await limiter.admit(who)
    await limiter.admit(who)
    with pytest.raises(RateLimited):
        await limiter.admit(who)
    assert time.perf_counter() - started < 0.5, "an outage costs a request nothing"


# -- breaker sync --


@pytest.fixture
async def processes(redis_server: RedisServer) -> AsyncIterator[Callable[[], Breakers]]:  # noqa: F811
    """``process()`` → the breakers of one more simulated process, synced through its own link."""
    started: list[tuple[RedisLink, BreakerSync]] = []

    def process() -> Breakers:
        link, breakers = RedisLink(redis_server.url, backoff=0.05), Breakers(BreakerConfig(2, 1.0))
        sync = BreakerSync(link, breakers)
        sync.start()
        started.append((link, sync))
        return breakers

    yield process
    for link, sync in started:
        await sync.stop()
        await link.aclose()


def trip(breakers: Breakers) -> None:
    breaker = breakers.get(Target("openai", "gpt-4o-mini"))
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(FAILURE)


async def test_an_opening_and_a_closing_reach_the_other_process(processes, redis_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    a, b = processes(), processes()
    await eventually(lambda: redis_server.client().pubsub_numsub("sluice:breakers")[0][1] == 2, message="two subscribers")
    trip(a)
    await eventually(lambda: b.states() == {LABEL: "open"}, message="b opens")
    assert 0.5 < b.by_label(LABEL).retry_after() <= 1.0, "open for the time the first process has left"
    assert not b.by_label(LABEL).allow()

    await eventually(lambda: a.by_label(LABEL).allow(), message="a's half-open trial")
    a.by_label(LABEL).record_success()
    await eventually(lambda: b.states() == {LABEL: "closed"}, message="b closes")
    assert redis_server.client().exists(BREAKER_PREFIX + LABEL) == 0


async def test_a_process_that_starts_late_catches_up(processes, redis_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    redis_server.client().set(BREAKER_PREFIX + LABEL, b"1700000000.000", px=5000)
    late = processes()
    await eventually(lambda: late.states() == {LABEL: "open"}, message="the late process opens")
    assert 4 < late.by_label(LABEL).retry_after() <= 5


def test_a_success_that_lands_after_the_breaker_opened_changes_nothing() -> None:
    """A call admitted before the breaker opened may still succeed; it neither raises nor closes it."""
    breakers = Breakers(BreakerConfig(1, 30))
    breaker = breakers.get(Target("openai", "gpt-4o-mini"))
    assert breaker.allow() and breaker.allow()
    breaker.record_failure(FAILURE)
    breaker.record_success()
    assert breaker.state == "open" and not breaker.allow()


# -- through real processes --

AUTH = {"Authorization": "Bearer sk-team-a"}


def shared_config(fake: FakeOpenAI, redis: RedisServer, **sections: Any) -> dict[str, Any]:
    return openai_config(fake, cache={"backend": "redis", "redis_url": redis.url}, **sections)


def post(proxy: ProxyProcess, content: str = "hi", **kwargs: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=10, **kwargs)


def breakers(proxy: ProxyProcess) -> dict[str, str]:
    return httpx.get(f"{proxy.url}/stats").json()["breakers"]


def err500() -> Reply:
    return Reply(status=500, json={"error": {"message": "down", "type": "server_error", "param": None, "code": None}})


def test_a_breaker_opened_through_one_process_is_open_in_another(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    config = shared_config(fake_openai, redis_server, retry={"max_attempts": 1}, breaker={"failure_threshold": 2, "reset_timeout_seconds": 30})
    a, b = start_proxy(config), start_proxy(config)
    wait_for(lambda: redis_server.client().pubsub_numsub("sluice:breakers")[0][1] == 2, message="both processes follow")
    fake_openai.script(err500(), err500())
    assert [post(a).status_code for _ in range(2)] == [502, 502]
    wait_for(lambda: breakers(b) == {LABEL: "open"}, message="the breaker open in the second process")
    calls = len(fake_openai.requests)
    refused = post(b)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "circuit_open"
    assert 25 < int(refused.headers["retry-after"]) <= 30
    assert len(fake_openai.requests) == calls, "the second process never called the upstream"


def test_a_recovered_target_closes_everywhere(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    config = shared_config(fake_openai, redis_server, retry={"max_attempts": 1}, breaker={"failure_threshold": 1, "reset_timeout_seconds": 1})
    a, b = start_proxy(config), start_proxy(config)
    wait_for(lambda: redis_server.client().pubsub_numsub("sluice:breakers")[0][1] == 2, message="both processes follow")
    fake_openai.script(err500())
    assert post(a).status_code == 502
    wait_for(lambda: breakers(b) == {LABEL: "open"}, message="open in the second process")
    wait_for(lambda: post(a, "trial").status_code == 200, message="the first process's trial succeeds")
    wait_for(lambda: breakers(b) == {LABEL: "closed"}, message="closed in the second process without a request")


def test_limits_are_shared_across_processes(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    key = {"name": "team-a", "key": "sk-team-a", "rpm": 2}
    config = shared_config(fake_openai, redis_server, auth={"keys": [key]})
    a, b = start_proxy(config), start_proxy(config)
    assert post(a, "one", headers=AUTH).status_code == 200
    assert post(b, "two", headers=AUTH).status_code == 200
    for proxy in (a, b):
        refused = post(proxy, "three", headers=AUTH)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60 and int(refused.headers["retry-after-ms"]) > 0
    assert len(fake_openai.calls("/chat/completions")) == 2


def test_redis_down_falls_back_to_local_limits_and_breakers(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    keys = [{"name": "team-a", "key": "sk-team-a", "rpm": 2}, {"name": "free", "key": "sk-free"}]
    config = shared_config(
        fake_openai, redis_server, auth={"keys": keys}, retry={"max_attempts": 1}, breaker={"failure_threshold": 2, "reset_timeout_seconds": 30}
    )
    proxy = start_proxy(config)
    assert post(proxy, "shared", headers=AUTH).status_code == 200
    redis_server.stop()

    started = time.perf_counter()
    assert [post(proxy, f"local {n}", headers=AUTH).status_code for n in range(3)] == [200, 200, 429], "this process's own count"
    free = {"Authorization": "Bearer sk-free"}
    fake_openai.script(err500(), err500())
    assert [post(proxy, "x", headers=free).status_code for _ in range(3)] == [502, 502, 503], "this process's own breaker"
    assert time.perf_counter() - started < 3, "a Redis outage must not slow requests down"

    redis_server.start()
    proxy.wait_for_log(lambda line: line.get("event") == "shared_state_recovered", timeout=10)
    events = [line.get("event") for line in proxy.log_lines()]
    assert events.count("shared_state_unavailable") == 1, "an outage is logged once per interval"
    assert "shared_state_recovered" in events
    assert redis_server.password not in proxy.logs()
