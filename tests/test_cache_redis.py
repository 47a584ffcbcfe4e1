"""The Redis cache backend against a real redis-server: unit level, then through the real proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from proxy.cache.base import CachedAnswer, CacheUnavailable
from proxy.cache.redis import KEY_PREFIX, RedisCache
from proxy.completions import Completion
from tests.conftest import openai_config
from tests.fakes.openai import FakeOpenAI
from tests.proxy_process import ProxyProcess
from tests.redis_server import RedisServer, redis_server  # noqa: F401

ANSWER = CachedAnswer(
    Completion.from_data({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0}]}), "openai"
)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(0.02)


@pytest.fixture
async def cache(redis_server: RedisServer) -> AsyncIterator[RedisCache]:  # noqa: F811
    cache = RedisCache(redis_server.url, backoff=0.05)
    yield cache
    await cache.aclose()


# -- the backend --


async def test_round_trip_keeps_bytes_data_and_provider(cache: RedisCache) -> None:
    body = b'{"id": "x",\n "choices": [], "note": "3:colons:inside"}'
    await cache.set("k1", CachedAnswer(Completion(body, {}), "my provider:2"), ttl=60)
    answer = await cache.get("k1")
    assert answer is not None
    assert answer.completion.body == body, "the stored bytes come back unchanged, never re-serialized"
    assert answer.completion.data == {"id": "x", "choices": [], "note": "3:colons:inside"}
    assert answer.provider == "my provider:2"
    assert await cache.get("absent") is None


async def test_ttl_is_kept_by_redis(cache: RedisCache, redis_server: RedisServer) -> None:  # noqa: F811
    await cache.set("long", ANSWER, ttl=60)
    await cache.set("short", ANSWER, ttl=0.05)
    assert 59_000 < redis_server.client().pttl(KEY_PREFIX + "long") <= 60_000, "expiry is Redis's PX, so every process sees it"
    deadline = time.monotonic() + 5
    while await cache.get("short") is not None:
        assert time.monotonic() < deadline, "the short entry never expired"
        await asyncio.sleep(0.01)
    assert await cache.get("long") is not None


async def test_clear_and_entries_count_only_sluice_keys(cache: RedisCache, redis_server: RedisServer) -> None:  # noqa: F811
    plain = redis_server.client()
    plain.set("other:app:key", b"keep")
    plain.set("sluice:queue", b"keep")
    with plain.pipeline() as pipe:  # more than one SCAN page
        for n in range(2500):
            pipe.set(f"{KEY_PREFIX}bulk{n}", b"x")
        pipe.execute()
    await cache.set("mine", ANSWER, ttl=60)
    assert await cache.entries() == 2501
    assert await cache.clear() == 2501
    assert await cache.entries() == 0
    assert plain.get("other:app:key") == b"keep" and plain.get("sluice:queue") == b"keep"


async def test_a_value_it_cannot_read_is_a_miss(cache: RedisCache, redis_server: RedisServer) -> None:  # noqa: F811
    redis_server.client().set(KEY_PREFIX + "odd", b"not a sluice entry")
    assert await cache.get("odd") is None


async def test_redis_down_fails_open_at_once_then_recovers(cache: RedisCache, redis_server: RedisServer) -> None:  # noqa: F811
    await cache.set("k", ANSWER, ttl=60)  # the pool now holds a connection that the crash will break
    redis_server.stop()
    started = time.perf_counter()
    with pytest.raises(CacheUnavailable):
        await cache.get("k")
    with pytest.raises(CacheUnavailable):
        await cache.set("k", ANSWER, ttl=60)
    assert time.perf_counter() - started < 0.5
    redis_server.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            await cache.set("k", ANSWER, ttl=60)
            break
        except CacheUnavailable:
            assert time.monotonic() < deadline, "the cache never came back after Redis did"
            await asyncio.sleep(0.01)
    assert (await cache.get("k")) == ANSWER


async def test_hung_redis_costs_one_timeout_then_nothing(redis_server: RedisServer) -> None:  # noqa: F811
    cache = RedisCache(redis_server.url, timeout=0.2, backoff=5)
    await cache.set("k", ANSWER, ttl=60)
    redis_server.pause()
    try:
        started = time.perf_counter()
        with pytest.raises(CacheUnavailable):
            await cache.get("k")
        first = time.perf_counter() - started
        started = time.perf_counter()
        with pytest.raises(CacheUnavailable):
            await cache.get("k")
        second = time.perf_counter() - started
    finally:
        redis_server.resume()
        await cache.aclose()
    assert first < 1.0, f"a hung Redis held a request for {first:.2f}s"
    assert second < 0.05, "during the backoff Redis is not even tried"


# -- through the real proxy --


def redis_config(fake_openai: FakeOpenAI, redis_server: RedisServer) -> dict[str, Any]:  # noqa: F811
    return openai_config(fake_openai, cache={"backend": "redis", "redis_url": redis_server.url})


def ask(proxy: ProxyProcess, content: str = "hello") -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_hit_after_miss_with_one_upstream_call(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    proxy = start_proxy(redis_config(fake_openai, redis_server))
    first, second = ask(proxy), ask(proxy)
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert second.headers["x-sluice-provider"] == "openai"
    assert second.headers["x-sluice-attempts"] == "0"
    assert len(fake_openai.calls("/chat/completions")) == 1


def test_two_processes_share_the_cache(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    config = redis_config(fake_openai, redis_server)
    a, b = start_proxy(config), start_proxy(config)
    assert ask(a).headers["x-sluice-cache"] == "miss"
    answer = ask(b)
    assert answer.headers["x-sluice-cache"] == "hit"
    assert answer.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert len(fake_openai.calls("/chat/completions")) == 1


def test_admin_clear_removes_only_sluice_entries(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    redis_server.client().set("not-sluice", b"keep")
    proxy = start_proxy(redis_config(fake_openai, redis_server))
    ask(proxy, "one")
    ask(proxy, "two")
    assert httpx.get(f"{proxy.url}/stats").json()["cache"]["entries"] == 2
    response = httpx.post(f"{proxy.url}/admin/cache/clear")
    assert response.status_code == 200 and response.json() == {"cleared": 2}
    assert httpx.get(f"{proxy.url}/stats").json()["cache"]["entries"] == 0
    assert ask(proxy, "one").headers["x-sluice-cache"] == "miss"
    assert redis_server.client().get("not-sluice") == b"keep"


def test_redis_outage_bypasses_then_heals(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    proxy = start_proxy(redis_config(fake_openai, redis_server))
    ask(proxy)
    assert ask(proxy).headers["x-sluice-cache"] == "hit"

    redis_server.stop()
    started = time.perf_counter()
    outage = [ask(proxy) for _ in range(5)]
    assert [r.headers["x-sluice-cache"] for r in outage] == ["bypass"] * 5
    assert all(r.json()["choices"][0]["message"]["content"] == "echo: hello" for r in outage)
    assert time.perf_counter() - started < 3, "a Redis outage must not slow requests down"

    redis_server.start()  # empty again: one miss stores the answer, then hits
    wait_for(lambda: ask(proxy).headers["x-sluice-cache"] == "hit", timeout=10, message="a cache hit after Redis came back")

    events = [line.get("event") for line in proxy.log_lines()]
    assert events.count("cache_unavailable") == 1, "an outage is logged once per interval, not per request"
    assert "cache_recovered" in events
    assert redis_server.password not in proxy.logs()
