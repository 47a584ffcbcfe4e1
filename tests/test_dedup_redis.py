"""Dedup across processes through Redis: two real Sluice processes, one real redis-server, one fake upstream."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.remote_flights import FLIGHT_PREFIX
from tests.conftest import openai_config
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.anthropic import message as anthropic_message
from tests.fakes.anthropic import stream_events as anthropic_stream_events
from tests.fakes.anthropic import text as anthropic_text
from tests.fakes.openai import FakeOpenAI, completion, stream_chunks
from tests.fakes.openai_responses import ResponsesState, response_events
from tests.fakes.server import Reply
from tests.proxy_process import ProxyProcess
from tests.redis_server import RedisServer, redis_server  # noqa: F401


def shared_config(fake: FakeOpenAI, redis: RedisServer) -> dict[str, Any]:
    return openai_config(fake, cache={"backend": "redis", "redis_url": redis.url})


@pytest.fixture
def pair(start_proxy, fake_openai, redis_server) -> tuple[ProxyProcess, ProxyProcess]:  # type: ignore[no-untyped-def]  # noqa: F811
    config = shared_config(fake_openai, redis_server)
    return start_proxy(config), start_proxy(config)


async def _dedup_stats(client: httpx.AsyncClient, proxies: tuple[ProxyProcess, ...]) -> list[dict[str, int]]:
    return [(await client.get(f"{p.url}/stats")).json()["dedup"] for p in proxies]


async def until_waiting(proxies: tuple[ProxyProcess, ...], callers: int, remote: int, timeout: float = 10.0) -> None:
    """Until ``callers`` requests wait on flights across the processes, ``remote`` of them on another process's call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            stats = await _dedup_stats(client, proxies)
            waiting = sum(s["waiting"] + s["in_flight"] for s in stats)
            if waiting >= callers and sum(s["remote_waiting"] for s in stats) >= remote:
                return
            if loop.time() > deadline:
                raise AssertionError(f"not all callers waiting: {stats}")
            await asyncio.sleep(0.01)


async def until(condition, timeout: float = 10.0, message: str = "condition") -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{message} not reached")
        await asyncio.sleep(0.01)


async def test_identical_json_requests_in_two_processes_make_one_upstream_call(pair, fake_openai, redis_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    a, b = pair
    gate = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "one answer for all"), gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "across processes"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [
            asyncio.create_task(client.post(f"{proxy.url}/v1/chat/completions", json=body))
            for _ in range(5)
            for proxy in (a, b)
        ]
        await until_waiting(pair, callers=10, remote=5)
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.content for r in responses}) == 1, "every caller gets the same bytes"
    assert responses[0].json()["choices"][0]["message"]["content"] == "one answer for all"
    assert len(fake_openai.calls("/chat/completions")) == 1
    assert sum(r.headers.get("x-sluice-dedup") == "joined" for r in responses) == 9
    assert {r.headers["x-sluice-provider"] for r in responses} == {"openai"}
    assert all(r.json()["usage"]["total_tokens"] == 18 for r in responses)
    async with httpx.AsyncClient() as client:

        async def stats() -> list[dict[str, Any]]:
            return [(await client.get(f"{p.url}/stats")).json() for p in pair]

        deadline = asyncio.get_running_loop().time() + 5
        while sum(s["requests"]["total"] for s in await stats()) < 10:
            assert asyncio.get_running_loop().time() < deadline, "every request recorded"
            await asyncio.sleep(0.01)
        recorded = await stats()
    assert sum(s["dedup"]["joined"] for s in recorded) == 9
    assert sum(s["tokens"]["prompt"] + s["tokens"]["completion"] for s in recorded) == 18, "spent once"
    plain = redis_server.client()
    await until(lambda: not [k for k in plain.scan_iter(FLIGHT_PREFIX + "*") if k.count(b":") == 2], message="the lock released")
    streams = list(plain.scan_iter(FLIGHT_PREFIX + "*"))
    assert len(streams) == 1 and 0 < plain.pttl(streams[0]) <= 30_000, "the finished stream expires by itself"


async def test_identical_streams_in_two_processes_make_one_upstream_call(pair, fake_openai) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    gate = threading.Event()
    text = "streamed across two processes"
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", text), gate=gate, chunk_delay=0.01))

    async def consume(proxy: ProxyProcess) -> tuple[str, int | None]:
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream everywhere"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return content, chunks[-1].usage.total_tokens if chunks[-1].usage else None

    tasks = [asyncio.create_task(consume(proxy)) for _ in range(5) for proxy in (a, b)]
    await until_waiting(pair, callers=10, remote=5)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert [content for content, _ in results] == [text] * 10
    assert len({usage for _, usage in results}) == 1 and results[0][1] is not None
    assert len(fake_openai.calls("/chat/completions")) == 1


async def test_a_late_streaming_joiner_in_another_process_gets_every_chunk(pair, fake_openai) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "alpha beta gamma delta epsilon zeta"), chunk_delay=0.1))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "late remote"}], "stream": True}
    leader_lines: list[str] = []

    async with httpx.AsyncClient(timeout=30) as client:

        async def read(proxy: ProxyProcess, into: list[str]) -> httpx.Headers:
            async with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    into.append(line)
                return response.headers

        leader = asyncio.create_task(read(a, leader_lines))
        await until(lambda: sum(line.startswith("data: ") for line in leader_lines) >= 3, message="three chunks")
        follower_lines: list[str] = []
        follower_headers = await read(b, follower_lines)
        leader_headers = await leader

    def events(lines: list[str]) -> list[str]:
        return [line for line in lines if line.startswith("data: ")]

    assert events(follower_lines) == events(leader_lines), "the same chunks, from the first, and [DONE]"
    assert events(follower_lines)[-1] == "data: [DONE]"
    text = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events(follower_lines)[:-1] if json.loads(e[6:])["choices"]
    )
    assert text == "alpha beta gamma delta epsilon zeta"
    assert follower_headers.get("x-sluice-dedup") == "joined" and "x-sluice-dedup" not in leader_headers
    assert follower_headers["x-sluice-provider"] == "openai"
    assert len(fake_openai.calls("/chat/completions")) == 1


async def test_a_json_follower_and_a_streaming_leader_in_different_processes(pair, fake_openai) -> None:  # type: ignore[no-untyped-def]
    """And the other way round: a streaming follower of a JSON leader gets the answer as a replayed stream."""
    a, b = pair
    for leader_streams in (True, False):
        gate = threading.Event()
        if leader_streams:
            fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "mixed modes"), gate=gate))
        else:
            fake_openai.script(Reply(json=completion("gpt-4o-mini", "mixed modes"), gate=gate))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"mixed {leader_streams}"}]}
        async with httpx.AsyncClient(timeout=30) as client:
            leader = asyncio.create_task(client.post(f"{a.url}/v1/chat/completions", json={**body, "stream": leader_streams}))
            await until_waiting((a,), callers=1, remote=0)
            follower = asyncio.create_task(client.post(f"{b.url}/v1/chat/completions", json={**body, "stream": not leader_streams}))
            await until_waiting((b,), callers=1, remote=1)
            gate.set()
            answers = {leader_streams: await leader, not leader_streams: await follower}
        assert answers[False].json()["choices"][0]["message"]["content"] == "mixed modes"
        streamed = [json.loads(line[6:]) for line in answers[True].text.splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed if e["choices"]) == "mixed modes"
        assert (await follower).headers["x-sluice-dedup"] == "joined"
    assert len(fake_openai.calls("/chat/completions")) == 2


async def test_an_error_reaches_the_followers_in_the_other_process(pair, fake_openai) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    gate = threading.Event()
    error = {"error": {"message": "bad thing", "type": "invalid_request_error", "param": None, "code": "bad"}}
    fake_openai.script(Reply(status=400, json=error, gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "err"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(client.post(f"{p.url}/v1/chat/completions", json=body)) for _ in range(2) for p in pair]
        await until_waiting(pair, callers=4, remote=2)
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [400] * 4
    assert {r.json()["error"]["message"] for r in responses} == {"bad thing"}
    assert len(fake_openai.calls("/chat/completions")) == 1


async def test_followers_take_over_when_the_leader_gives_up(pair, fake_openai) -> None:  # type: ignore[no-untyped-def]
    """The leader's only client leaves: its call is cancelled, and the other process makes the call itself."""
    a, b = pair
    never = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "never sent"), gate=never), Reply(json=completion("gpt-4o-mini", "second try")))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "abandoned"}]}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            leader = asyncio.create_task(client.post(f"{a.url}/v1/chat/completions", json=body))
            leading = lambda: len(fake_openai.calls("/chat/completions")) == 1  # noqa: E731
            await until(leading, message="the leader's call reached the upstream")
            follower = asyncio.create_task(client.post(f"{b.url}/v1/chat/completions", json=body))
            await until_waiting((b,), callers=1, remote=1)
            leader.cancel()  # the client disconnects
            answer = await asyncio.wait_for(follower, 10)
    finally:
        never.set()
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "second try"
    assert "x-sluice-dedup" not in answer.headers, "the follower made the call itself"
    assert len(fake_openai.calls("/chat/completions")) == 2


async def test_no_cache_requests_are_never_merged_across_processes(pair, fake_openai) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    gate = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "a"), gate=gate), Reply(json=completion("gpt-4o-mini", "b"), gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fresh everywhere"}]}
    headers = {"Cache-Control": "no-cache"}
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(client.post(f"{p.url}/v1/chat/completions", json=body, headers=headers)) for p in pair]
        await until(lambda: len(fake_openai.requests) >= 2, message="two upstream calls")
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200, 200]
    assert len(fake_openai.calls("/chat/completions")) == 2
    assert not any(r.headers.get("x-sluice-dedup") for r in responses)


async def test_redis_down_each_process_answers_on_its_own(pair, fake_openai, redis_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    redis_server.stop()
    gate = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "local"), gate=gate), Reply(json=completion("gpt-4o-mini", "local"), gate=gate))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no redis"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(client.post(f"{p.url}/v1/chat/completions", json=body)) for p in pair]
        await until(lambda: len(fake_openai.requests) >= 2, message="both processes went upstream")
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200, 200]
    assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {"local"}
    assert len(fake_openai.calls("/chat/completions")) == 2


async def _flight_lock(fake: FakeOpenAI, proxy: ProxyProcess, redis: RedisServer, body: dict[str, Any]) -> bytes:  # noqa: F811
    """The flight lock key of ``body``: seen while one such request is held upstream (TTL 0: nothing cached)."""
    gate = threading.Event()
    fake.script(Reply(json=completion("gpt-4o-mini", "first"), gate=gate))
    plain = redis.client()
    async with httpx.AsyncClient(timeout=30) as client:
        first = asyncio.create_task(client.post(f"{proxy.url}/v1/chat/completions", json=body, headers=NO_STORE_TTL))
        await until_waiting((proxy,), callers=1, remote=0)
        locks = [k for k in plain.scan_iter(FLIGHT_PREFIX + "*") if k.count(b":") == 2]
        gate.set()
        assert (await first).status_code == 200
    await until(lambda: not plain.exists(*locks), message="the lock released")
    assert len(locks) == 1
    return locks[0]


NO_STORE_TTL = {"X-Sluice-Cache-TTL": "0"}  # answered and shared as usual, but not cached


async def test_a_dead_leader_is_replaced_when_its_lease_runs_out(pair, fake_openai, redis_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    a, b = pair
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "dead leader"}]}
    lock = await _flight_lock(fake_openai, a, redis_server, body)
    redis_server.client().set(lock, "dead", px=300)  # a leader that died before its final entry
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "after the dead leader")))
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{b.url}/v1/chat/completions", json=body, headers=NO_STORE_TTL)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "after the dead leader"
    assert "x-sluice-dedup" not in answer.headers
    assert len(fake_openai.calls("/chat/completions")) == 2


async def test_a_leader_dying_mid_stream_ends_the_followers_streams_with_an_error(pair, fake_openai, redis_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    a, b = pair
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "dies mid-stream"}]}
    lock = await _flight_lock(fake_openai, a, redis_server, body)
    plain = redis_server.client()
    chunk = stream_chunks("gpt-4o-mini", "half an answer")[0]
    plain.xadd(lock + b":dead", {"k": "c", "c": json.dumps(chunk), "p": "openai", "m": "gpt-4o-mini"})
    plain.set(lock, "dead", px=500)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{b.url}/v1/chat/completions", json={**body, "stream": True})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert response.headers["x-sluice-dedup"] == "joined" and response.headers["x-sluice-provider"] == "openai"
    assert events[0] == chunk, "what the leader had sent"
    assert events[-1]["error"]["code"] == "upstream_error"
    assert "[DONE]" not in response.text
    assert len(fake_openai.calls("/chat/completions")) == 1, "never started again: the client already has the start"


# -- every client API: native events cross with their frames --------------------------------

ANTHROPIC_MODEL = "anthropic/claude-sonnet-4-5-20250929"
APIS = {  # (client API, model): which fake answers, and in which form
    "responses, native": ("responses", "gpt-4o-mini"),
    "responses, bridged": ("responses", "chat-only/gpt-4o-mini"),
    "messages, native": ("messages", ANTHROPIC_MODEL),
    "messages, translated": ("messages", "gpt-4o-mini"),
}


@pytest.fixture
def api_pair(start_proxy, fake_openai, fake_anthropic, redis_server) -> tuple[ProxyProcess, ProxyProcess]:  # type: ignore[no-untyped-def]  # noqa: F811
    config = shared_config(fake_openai, redis_server)
    config["providers"] += [
        {"name": "chat-only", "type": "openai", "base_url": f"{fake_openai.url}/v1", "api_key": "sk-up", "responses": False},
        {"name": "anthropic", "type": "anthropic", "base_url": f"{fake_anthropic.url}/v1", "api_key": "sk-ant"},
    ]
    return start_proxy(config), start_proxy(config)


def gated(case: str, streaming: bool, text: str, gate: threading.Event, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic) -> None:
    """Script the one upstream answer ``case`` gets, held until ``gate`` opens."""
    if case == "responses, native":
        _, response = ResponsesState().create({"model": "gpt-4o-mini", "input": text})
        if streaming:
            events = b"".join(response_events(response))
            fake_openai.script(Reply(gate=gate, body=events, headers={"content-type": "text/event-stream"}))
        else:
            fake_openai.script(Reply(gate=gate, json=response))
    elif case == "messages, native":
        answer = anthropic_message([anthropic_text(f"echo: {text}")])
        fake_anthropic.script(Reply(gate=gate, chunks=anthropic_stream_events(answer)) if streaming else Reply(gate=gate, json=answer))
    else:
        fake_openai.script(
            Reply(gate=gate, chunks=stream_chunks("gpt-4o-mini", f"echo: {text}")) if streaming
            else Reply(gate=gate, json=completion("gpt-4o-mini", f"echo: {text}"))
        )


async def ask_api(proxy: ProxyProcess, api: str, model: str, text: str, streaming: bool) -> tuple[str, str]:
    """One request through the API's official SDK: (the answer's text, its id)."""
    if api == "responses":
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
        if not streaming:
            response = await client.responses.create(model=model, input=text)
            return response.output_text, response.id
        async with client.responses.stream(model=model, input=text) as stream:
            final = await stream.get_final_response()
        return final.output_text, final.id
    messages = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
    turns: list[Any] = [{"role": "user", "content": text}]
    if not streaming:
        message = await messages.messages.create(model=model, max_tokens=64, messages=turns)
        return message.content[0].text, message.id  # type: ignore[union-attr]
    async with messages.messages.stream(model=model, max_tokens=64, messages=turns) as stream:
        final_message = await stream.get_final_message()
    return final_message.content[0].text, final_message.id  # type: ignore[union-attr]


def upstream_calls(fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic) -> int:
    return len(fake_openai.calls("/v1/responses")) + len(fake_openai.calls("/chat/completions")) + len(fake_anthropic.calls("/messages"))


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", list(APIS))
async def test_identical_requests_of_every_api_in_two_processes_make_one_upstream_call(  # type: ignore[no-untyped-def]
    api_pair, fake_openai, fake_anthropic, case: str, streaming: bool
) -> None:
    api, model = APIS[case]
    gate = threading.Event()
    text = f"{case} {streaming} across processes"
    gated(case, streaming, text, gate, fake_openai, fake_anthropic)
    tasks = [asyncio.create_task(ask_api(proxy, api, model, text, streaming)) for _ in range(3) for proxy in api_pair]
    await until_waiting(api_pair, callers=6, remote=3)
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert {answer for answer, _ in answers} == {f"echo: {text}"}
    assert len({answer_id for _, answer_id in answers}) == 1, "one answer, one id, in both processes"
    assert upstream_calls(fake_openai, fake_anthropic) == 1


@pytest.mark.parametrize("case", ["responses, native", "messages, native"])
async def test_a_streaming_follower_of_a_json_leader_in_another_process_gets_its_apis_events(  # type: ignore[no-untyped-def]
    api_pair, fake_openai, fake_anthropic, case: str
) -> None:
    """The leader's answer is the provider's own JSON: replayed as that API's events, not as chat chunks."""
    a, b = api_pair
    api, model = APIS[case]
    gate = threading.Event()
    text = f"{case} mixed modes"
    gated(case, False, text, gate, fake_openai, fake_anthropic)
    leader = asyncio.create_task(ask_api(a, api, model, text, streaming=False))
    await until_waiting((a,), callers=1, remote=0)
    follower = asyncio.create_task(ask_api(b, api, model, text, streaming=True))
    await until_waiting((b,), callers=1, remote=1)
    gate.set()
    assert await leader == await follower
    assert (await follower)[0] == f"echo: {text}"
    assert upstream_calls(fake_openai, fake_anthropic) == 1
