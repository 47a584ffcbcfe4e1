"""OpenAI's ``x-ratelimit-*`` headers for keys with rpm/tpm: the limiters' arithmetic, then the real server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from proxy.config import ApiKey, AuthConfig
from proxy.errors import RateLimited
from proxy.limits import Limiter, Principal, reset_duration
from proxy.shared_state import RedisLimiter, RedisLink
from tests.conftest import openai_config
from tests.redis_server import RedisServer, redis_server  # noqa: F401


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (0.25, "250ms"), (1, "1s"), (1.5, "1.5s"), (59.9996, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s"), (3725, "1h2m5s")],
)
def test_reset_is_written_as_openai_writes_it(seconds: float, text: str) -> None:
    assert reset_duration(seconds) == text


# -- both limiters, same answers --

class Limiters:
    """Makes the limiter under test; ``settle`` waits for the Redis writes sent after an answer."""

    def __init__(self, link: RedisLink | None) -> None:
        self._link = link

    def make(self, who: Principal) -> Limiter:
        auth = AuthConfig(keys=(who.key,))  # type: ignore[arg-type]
        return Limiter(auth) if self._link is None else RedisLimiter(auth, self._link)

    async def settle(self) -> None:
        if self._link is not None:
            await self._link.drain()


@pytest.fixture(params=["memory", "redis"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[Limiters]:
    if request.param == "memory":
        yield Limiters(None)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    link = RedisLink(server.url)
    yield Limiters(link)
    await link.aclose()


def principal(**limits: Any) -> Principal:
    return Principal("team-a", ApiKey("team-a", "sk-team-a", **limits))


async def test_headers_count_down_the_window_and_say_when_it_frees(limiters: Limiters) -> None:
    who = principal(rpm=3, tpm=1000)
    limiter = limiters.make(who)
    t = time.time()
    await limiter.admit(who, t)
    limiter.charge(who, 120, 0.0, t + 1)
    await limiters.settle()
    await limiter.admit(who, t + 10)
    assert limiter.rate_headers("team-a", t + 10) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "50s",  # the first request leaves the window at t + 60
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "880",
        "x-ratelimit-reset-tokens": "51s",
    }
    await limiter.admit(who, t + 20)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(who, t + 30)
    headers = refused.value.headers()
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "30s"
    assert headers["Retry-After"] == "30"


async def test_keys_without_rpm_or_tpm_get_no_headers(limiters: Limiters) -> None:
    who = principal(budget_usd_per_day=5.0)
    limiter = limiters.make(who)
    await limiter.admit(who)
    assert limiter.rate_headers("team-a") == {}
    assert limiter.rate_headers(None) == {}
    assert limiter.rate_headers("nobody") == {}


# -- through the real server, read by the OpenAI SDK --


def test_every_answer_and_the_429_carry_the_headers(start_proxy, fake_openai) -> None:
    keys = [{"name": "team-a", "key": "sk-team-a", "rpm": 2, "tpm": 10000}, {"name": "free", "key": "sk-free"}]
    proxy = start_proxy(openai_config(fake_openai, auth={"keys": keys}, cache={"enabled": False}))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-team-a", max_retries=0)
    messages = [{"role": "user", "content": "pace me"}]

    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(10000 - 18)  # the fake's usage: 11 + 7
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")

    stream = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, stream=True)
    assert stream.headers["x-ratelimit-remaining-requests"] == "0"
    for _ in stream.parse():
        pass

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"

    free = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-free", max_retries=0)
    answer = free.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert not [name for name in answer.headers if name.startswith("x-ratelimit")]
