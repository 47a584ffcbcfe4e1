"""The Redis cache backend against a real redis-server: unit level, then through the real proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from proxy.cache.base import CachedAnswer, CacheUnavailable
from proxy.cache.near import NearCache
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


# -- the near copy (proxy/cache/near.py), kept coherent by Redis's invalidations --


@pytest.fixture
async def tracked(redis_server: RedisServer) -> AsyncIterator[RedisCache]:  # noqa: F811
    cache = RedisCache(redis_server.url, backoff=0.05)
    await cache.start()
    await until(lambda: cache.near.live, "the invalidation connection to come up")
    yield cache
    await cache.aclose()


async def until(condition: Callable[[], bool], message: str, timeout: float = 5.0) -> None:
    """Redis's messages come on their own connection, in their own time: wait for their effect."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout}s for {message}"
        await asyncio.sleep(0.01)


async def write(cache: RedisCache, key: str, answer: CachedAnswer, ttl: float) -> None:
    """``cache.set``, then wait for Redis's own message about it: a read that overlaps one is not kept.

    The epoch moves twice: once as ``set`` drops the near copy, once for the message."""
    target = cache.near.epoch + 2
    await cache.set(key, answer, ttl)
    await until(lambda: cache.near.epoch >= target, f"Redis's invalidation of {key}")


def stored(content: str) -> bytes:
    body = Completion.from_data({"id": content, "object": "chat.completion", "choices": []}).body
    return b"6:openai" + body


async def test_a_read_is_kept_near_until_any_process_changes_the_key(tracked: RedisCache, redis_server: RedisServer) -> None:  # noqa: F811
    other = redis_server.client()
    epoch = tracked.near.epoch
    other.set(KEY_PREFIX + "k", stored("first"), px=60_000)
    await until(lambda: tracked.near.epoch != epoch, "the invalidation of the new key")  # else the read is not kept
    first = await tracked.get("k")
    assert first is not None and first.completion.data["id"] == "first"
    assert tracked.get_nowait("k") is first, "kept near: the same object, without Redis"

    other.set(KEY_PREFIX + "k", stored("second"), px=60_000)  # another process refreshes the entry
    await until(lambda: tracked.get_nowait("k") is None, "the invalidation of the overwritten key")
    second = await tracked.get("k")
    assert tracked.get_nowait("k") is second
    assert second is not None and second.completion.data["id"] == "second"

    other.delete(KEY_PREFIX + "k")
    await until(lambda: tracked.get_nowait("k") is None, "the invalidation of the deleted key")
    assert await tracked.get("k") is None


async def test_a_near_copy_ends_with_its_ttl_and_with_a_clear(tracked: RedisCache) -> None:
    await write(tracked, "short", ANSWER, ttl=1.0)
    await write(tracked, "long", ANSWER, ttl=60)
    assert await tracked.get("short") is not None and await tracked.get("long") is not None
    assert tracked.get_nowait("short") is not None and tracked.get_nowait("long") is not None
    await until(lambda: tracked.get_nowait("short") is None, "the near copy of the short entry to end")
    assert tracked.get_nowait("long") is not None
    assert await tracked.clear() == 1, "the short entry has expired in Redis too"
    assert tracked.get_nowait("long") is None and await tracked.get("long") is None


async def test_its_own_write_replaces_the_near_copy_at_once(tracked: RedisCache) -> None:
    await write(tracked, "k", ANSWER, ttl=60)
    assert await tracked.get("k") == ANSWER and tracked.get_nowait("k") is not None
    newer = CachedAnswer(Completion.from_data({"id": "newer", "choices": []}), "openai")
    await tracked.set("k", newer, ttl=60)
    assert tracked.get_nowait("k") is None
    assert (await tracked.get("k")) == newer


async def test_no_near_copy_while_the_invalidations_cannot_be_heard(tracked: RedisCache, redis_server: RedisServer) -> None:  # noqa: F811
    await write(tracked, "k", ANSWER, ttl=60)
    assert await tracked.get("k") is not None and tracked.get_nowait("k") is not None
    redis_server.pause()  # hung, not gone: only the missing answer to a ping tells
    try:
        await until(lambda: not tracked.near.live, "the near copy to be given up")
        assert tracked.get_nowait("k") is None
    finally:
        redis_server.resume()
    await until(lambda: tracked.near.live, "the invalidation connection to come back")
    assert tracked.get_nowait("k") is None, "nothing kept from before: messages may have been missed"


def test_a_read_that_overlaps_an_invalidation_of_its_key_is_not_kept() -> None:
    near = NearCache(max_entries=10, max_bytes=10**6)
    near.reset(live=True)
    epoch = near.epoch  # reads of "k" and "j" begin
    near.invalidate(["k"])  # arrives while they are in flight
    near.keep("k", ANSWER, ttl_ms=60_000, epoch=epoch)
    near.keep("j", ANSWER, ttl_ms=60_000, epoch=epoch)
    assert near.get("k") is None, "the message may have been about the value read"
    assert near.get("j") is ANSWER, "another key's message says nothing about this read"

    epoch = near.epoch
    near.keep("k", ANSWER, ttl_ms=60_000, epoch=epoch)
    assert near.get("k") is ANSWER, "a read that began after the message is kept"

    epoch = near.epoch
    near.invalidate(None)  # everything changed (FLUSHDB) while a read was in flight
    near.keep("k", ANSWER, ttl_ms=60_000, epoch=epoch)
    assert near.get("k") is None and near.get("j") is None
    near.keep("k", ANSWER, ttl_ms=60_000, epoch=near.epoch)
    near.reset(live=False)
    assert near.get("k") is None


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
    # The first may still come from the near copy, if the request is read before the closed
    # invalidation connection is; after that, nothing is answered from it.
    assert [r.headers["x-sluice-cache"] for r in outage][1:] == ["bypass"] * 4
    assert all(r.json()["choices"][0]["message"]["content"] == "echo: hello" for r in outage)
    assert time.perf_counter() - started < 3, "a Redis outage must not slow requests down"

    redis_server.start()  # empty again: one miss stores the answer, then hits
    wait_for(lambda: ask(proxy).headers["x-sluice-cache"] == "hit", timeout=10, message="a cache hit after Redis came back")

    events = [line.get("event") for line in proxy.log_lines()]
    assert events.count("cache_unavailable") == 1, "an outage is logged once per interval, not per request"
    assert "cache_recovered" in events
    assert redis_server.password not in proxy.logs()


def test_the_hit_lane_serves_redis_hits_and_hears_another_process_refresh_them(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    config = redis_config(fake_openai, redis_server)
    a, b = start_proxy(config), start_proxy(config)
    first = ask(a).json()["id"]
    assert [ask(a).json()["id"] for _ in range(4)] == [first] * 4
    assert httpx.get(f"{a.url}/stats").json()["cache"]["lane_hits"] == 2, "the full path twice, then the lane"

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    fresh = httpx.post(f"{b.url}/v1/chat/completions", json=body, headers={"Cache-Control": "no-cache"}).json()["id"]
    assert fresh != first
    wait_for(lambda: ask(a).json()["id"] == fresh, message="process a answering with b's refreshed entry")

    assert httpx.post(f"{b.url}/admin/cache/clear").json()["cleared"] == 1
    wait_for(lambda: ask(a).headers["x-sluice-cache"] == "miss", message="process a missing after b cleared the cache")
    assert len(fake_openai.calls("/chat/completions")) == 3


def test_with_the_near_copy_off_every_hit_reads_redis(start_proxy, fake_openai, redis_server) -> None:  # noqa: F811
    config = redis_config(fake_openai, redis_server)
    config["cache"]["near_copy"] = False
    proxy = start_proxy(config)
    assert [ask(proxy).headers["x-sluice-cache"] for _ in range(4)] == ["miss", "hit", "hit", "hit"]
    cache = httpx.get(f"{proxy.url}/stats").json()["cache"]
    assert (cache["near_live"], cache["near_entries"], cache["lane_hits"]) == (False, 0, 0)
