"""Response cache (memory backend) and in-flight deduplication, end to end."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest

from tests.conftest import openai_config
from tests.fakes.openai import completion, stream_chunks
from tests.fakes.server import Reply

MESSAGES = [{"role": "user", "content": "cache me"}]


@pytest.fixture
def proxy(start_proxy, fake_openai):  # type: ignore[no-untyped-def]
    return start_proxy(openai_config(fake_openai, pricing_file=None))


def post(proxy, body, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, **kwargs)


def sse_events(response_lines) -> list[dict]:  # type: ignore[no-untyped-def]
    events = [line[6:] for line in response_lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_hit_after_miss_with_one_upstream_call(proxy, fake_openai) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0}
    first, second = post(proxy, body), post(proxy, body)
    assert first.headers["x-sluice-cache"] == "miss" and second.headers["x-sluice-cache"] == "hit"
    assert second.json() == first.json()
    assert second.headers["x-sluice-attempts"] == "0"
    assert second.headers["x-sluice-provider"] == "openai"
    assert len(fake_openai.calls("/chat/completions")) == 1
    stats = httpx.get(f"{proxy.url}/stats").json()
    assert stats["cache"]["hits"] == 1 and stats["cache"]["misses"] == 1 and stats["cache"]["entries"] == 1
    assert stats["tokens"]["saved_by_cache"] == 18


def test_key_order_and_ignored_fields_do_not_change_the_key(proxy, fake_openai) -> None:
    raw_a = b'{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"k"}]}'
    raw_b = b'{"messages":[{"content":"k","role":"user"}],"user":"bob","temperature":0,"model":"gpt-4o-mini"}'
    headers = {"content-type": "application/json"}
    assert httpx.post(f"{proxy.url}/v1/chat/completions", content=raw_a, headers=headers).headers["x-sluice-cache"] == "miss"
    assert httpx.post(f"{proxy.url}/v1/chat/completions", content=raw_b, headers=headers).headers["x-sluice-cache"] == "hit"
    different = post(proxy, {"model": "gpt-4o-mini", "temperature": 0.5, "messages": [{"role": "user", "content": "k"}]})
    assert different.headers["x-sluice-cache"] == "miss"


def test_stream_answer_replays_as_json_and_json_replays_as_stream(proxy, fake_openai) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        if c.choices
    )
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-sluice-cache"] == "hit"
    assert raw.parse().choices[0].message.content == streamed == "echo: cache me"
    assert raw.parse().usage.total_tokens == 18

    other = [{"role": "user", "content": "json first"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=other)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=other, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == first.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len(fake_openai.calls("/chat/completions")) == 2


def test_ttl_header_and_cache_control(proxy, fake_openai) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ttl"}]}
    assert post(proxy, body, headers={"X-Sluice-Cache-TTL": "0"}).headers["x-sluice-cache"] == "miss"
    assert post(proxy, body).headers["x-sluice-cache"] == "miss", "a TTL of 0 stores nothing"
    assert post(proxy, body, headers={"Cache-Control": "no-cache"}).headers["x-sluice-cache"] == "bypass"
    assert len(fake_openai.calls("/chat/completions")) == 3, "no-cache went upstream"
    assert post(proxy, body).headers["x-sluice-cache"] == "hit"
    fresh = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "never stored"}]}
    assert post(proxy, fresh, headers={"Cache-Control": "no-store"}).headers["x-sluice-cache"] == "bypass"
    assert post(proxy, fresh).headers["x-sluice-cache"] == "miss", "no-store wrote nothing"


def test_ttl_expiry(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"ttl_seconds": 0.3}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "expire"}]}
    assert post(proxy, body).headers["x-sluice-cache"] == "miss"
    assert post(proxy, body).headers["x-sluice-cache"] == "hit"
    deadline = threading.Event()
    for _ in range(50):
        if post(proxy, body).headers["x-sluice-cache"] == "miss":
            break
        deadline.wait(0.05)
    else:
        pytest.fail("entry never expired")


def test_different_passthrough_keys_never_share_answers(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, provider={"api_key": ""}))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    a = post(proxy, body, headers={"Authorization": "Bearer sk-a"})
    b = post(proxy, body, headers={"Authorization": "Bearer sk-b"})
    a2 = post(proxy, body, headers={"Authorization": "Bearer sk-a"})
    assert (a.headers["x-sluice-cache"], b.headers["x-sluice-cache"], a2.headers["x-sluice-cache"]) == ("miss", "miss", "hit")


def test_errors_and_cut_streams_are_not_cached(proxy, fake_openai) -> None:
    fake_openai.script(Reply(status=500, json={"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}), Reply(status=500, json={"error": {"message": "boom"}}), Reply(status=500, json={"error": {"message": "boom"}}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fail"}]}
    assert post(proxy, body).status_code == 502
    assert post(proxy, body).headers["x-sluice-cache"] == "miss"

    chunks = stream_chunks("gpt-4o-mini", "cut short here please")
    fake_openai.script(Reply(chunks=chunks, cut_after=3))
    stream_body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=stream_body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    last = json.loads(lines[-1][6:])
    assert "error" in last, "a broken stream ends with an SSE error event"
    assert post(proxy, stream_body).headers["x-sluice-cache"] == "miss"


def test_admin_cache_clear(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, auth={"admin_key": "adm-1"}))
    post(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert httpx.post(f"{proxy.url}/admin/cache/clear").status_code == 401
    cleared = httpx.post(f"{proxy.url}/admin/cache/clear", headers={"Authorization": "Bearer adm-1"})
    assert cleared.json() == {"cleared": 1}


def test_cache_disabled_says_off(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    assert post(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES}).headers["x-sluice-cache"] == "off"


async def test_twenty_concurrent_identical_requests_make_one_upstream_call(proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "shared answer"), gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "dedup"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(client.post(f"{proxy.url}/v1/chat/completions", json=body)) for _ in range(20)]
        await _until_joined(proxy, client, 19)
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {"shared answer"}
    assert len(fake_openai.calls("/chat/completions")) == 1
    assert sum(r.headers.get("x-sluice-dedup") == "joined" for r in responses) == 19
    assert all(r.json()["usage"]["total_tokens"] == 18 for r in responses)


async def test_ten_concurrent_streams_make_one_upstream_call(proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "streamed to every follower"), gate=gate, chunk_delay=0.01))
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")

    async def consume() -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    tasks = [asyncio.create_task(consume()) for _ in range(10)]
    async with httpx.AsyncClient() as http:
        await _until_joined(proxy, http, 9)
    gate.set()
    texts = await asyncio.gather(*tasks)
    assert texts == ["streamed to every follower"] * 10
    assert len(fake_openai.calls("/chat/completions")) == 1


async def test_late_streaming_joiner_gets_every_chunk(proxy, fake_openai) -> None:
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "alpha beta gamma delta epsilon"), chunk_delay=0.1))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "late"}], "stream": True}
    leader_lines: list[str] = []

    async with httpx.AsyncClient(timeout=30) as client:
        async def read(into: list[str]) -> httpx.Headers:
            async with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    into.append(line)
                return response.headers

        leader = asyncio.create_task(read(leader_lines))
        await _until(lambda: sum(line.startswith("data: ") for line in leader_lines) >= 3)
        follower_lines: list[str] = []
        follower_headers = await read(follower_lines)
        await leader

    def text(lines: list[str]) -> str:
        return "".join((e["choices"][0]["delta"].get("content") or "") for e in sse_events(lines) if e["choices"])

    assert follower_headers.get("x-sluice-dedup") == "joined"
    assert text(follower_lines) == text(leader_lines) == "echo: alpha beta gamma delta epsilon".removeprefix("echo: ")
    assert len(fake_openai.calls("/chat/completions")) == 1


def test_no_cache_requests_are_never_merged(proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "a"), gate=gate), Reply(json=completion("gpt-4o-mini", "b"), gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fresh"}]}
    results: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: results.append(post(proxy, body, headers={"Cache-Control": "no-cache"}, timeout=30)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    while len(fake_openai.requests) < 2:
        threading.Event().wait(0.01)
    gate.set()
    for thread in threads:
        thread.join()
    assert len(fake_openai.calls("/chat/completions")) == 2
    assert not any(r.headers.get("x-sluice-dedup") for r in results)


async def test_leader_failure_reaches_every_follower_once(proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(status=400, json={"error": {"message": "bad thing", "type": "invalid_request_error", "param": None, "code": "bad"}}, gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "err"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(client.post(f"{proxy.url}/v1/chat/completions", json=body)) for _ in range(5)]
        await _until_joined(proxy, client, 4)
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [400] * 5
    assert {r.json()["error"]["message"] for r in responses} == {"bad thing"}
    assert len(fake_openai.calls("/chat/completions")) == 1


def _stats(proxy) -> dict:  # type: ignore[no-untyped-def]
    return httpx.get(f"{proxy.url}/stats").json()


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def _until_joined(proxy, client: httpx.AsyncClient, followers: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until the proxy reports ``followers`` requests waiting on one flight."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        stats = (await client.get(f"{proxy.url}/stats")).json()
        if stats.get("dedup", {}).get("waiting", 0) >= followers:
            return
        if loop.time() > deadline:
            raise AssertionError(f"only {stats.get('dedup')} joined")
        await asyncio.sleep(0.01)
