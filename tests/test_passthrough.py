"""The OpenAI passthrough end to end: the real server, a fake upstream, the official SDK and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import openai_config
from tests.fakes.openai import completion, stream_chunks
from tests.fakes.server import Reply

SECRET = "sk-upstream-secret-123"


@pytest.fixture
def proxy(start_proxy, fake_openai):  # type: ignore[no-untyped-def]
    return start_proxy(openai_config(fake_openai, cache={"enabled": False}, dedup={"enabled": False}))


def test_sync_sdk_chat_completion(proxy, fake_openai) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.usage is not None and completion.usage.total_tokens == 18
    assert response.headers["x-sluice-provider"] == "openai"
    assert response.headers["x-sluice-attempts"] == "1"
    assert response.headers["x-request-id"].startswith("req_")
    assert fake_openai.calls("/chat/completions")[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_async_sdk_stream_with_usage(proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "echo: one two three"
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens == 11


def test_stream_without_include_usage_strips_usage_chunk(proxy, fake_openai) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks), "the usage-only chunk reached a client that did not ask for it"
    sent = fake_openai.calls("/chat/completions")[0].json
    assert sent["stream_options"] == {"include_usage": True}, "Sluice asks the upstream for usage anyway"


def test_tool_call_round_trip(proxy) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: list = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    assert second.choices[0].message.content == "echo: sunny"


def test_upstream_receives_body_unchanged(proxy, fake_openai) -> None:
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x_unknown":{"b":1,"a":[1,2]},"temperature":0.2}'
    response = httpx.post(f"{proxy.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert fake_openai.calls("/chat/completions")[0].body == raw


def test_provider_prefix_rewrites_only_the_model(proxy, fake_openai) -> None:
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x_extra": 1}
    assert httpx.post(f"{proxy.url}/v1/chat/completions", json=body).status_code == 200
    assert fake_openai.calls("/chat/completions")[0].json == {**body, "model": "gpt-4o"}


def test_configured_key_never_reaches_client_or_logs(proxy, fake_openai) -> None:
    fake_openai.script(Reply(status=401, json={"error": {"message": "Incorrect API key provided: sk-upst***123", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}))
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ok"}]})
    for text in (response.text, str(response.headers), proxy.logs(), httpx.get(f"{proxy.url}/stats").text, httpx.get(f"{proxy.url}/metrics").text):
        assert SECRET not in text


def test_passthrough_credentials_when_no_key_configured(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, provider={"api_key": "", "pass_client_key": True}))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client-own-key")
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert fake_openai.calls("/chat/completions")[0].headers["authorization"] == "Bearer sk-client-own-key"
    assert "sk-client-own-key" not in proxy.logs()


def test_embeddings_and_models(proxy, fake_openai) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 3
    ids = [m.id for m in client.models.list()]
    assert "openai/gpt-4o-mini" in ids


def test_request_id_is_echoed_and_logged(proxy) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret prompt text"}]},
        headers={"X-Request-ID": "my-trace-42"},
    )
    assert response.headers["x-request-id"] == "my-trace-42"
    lines = proxy.wait_for_log(lambda line: line.get("request_id") == "my-trace-42")
    assert len(lines) == 1, "exactly one log line per request"
    line = lines[0]
    assert line["status"] == 200 and line["provider"] == "openai" and line["model"] == "gpt-4o-mini"
    assert "secret prompt text" not in proxy.logs(), "prompt text is not logged"


def test_health_and_readiness(proxy) -> None:
    assert httpx.get(f"{proxy.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{proxy.url}/readyz")
    assert ready.status_code == 200 and "openai" in ready.json()["providers"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_upstreams_request_id_and_rate_limits_reach_the_client(start_proxy, fake_openai, stream: bool) -> None:
    """Under their own names, except the request id: X-Request-ID stays Sluice's (CONTRACT §5)."""
    upstream = {"x-request-id": "req_upstream_7", "x-ratelimit-remaining-requests": "41"}
    reply = Reply(chunks=stream_chunks("gpt-4o-mini", "hi")) if stream else Reply(json=completion("gpt-4o-mini", "hi"))
    reply.headers = upstream
    fake_openai.script(reply)
    proxy = start_proxy(openai_config(fake_openai))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers={"X-Request-ID": "mine-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "mine-1"
    assert response.headers["x-upstream-request-id"] == "req_upstream_7"
    assert response.headers["x-ratelimit-remaining-requests"] == "41"
    cached = httpx.post(f"{proxy.url}/v1/chat/completions", json=body)
    assert cached.headers["x-sluice-cache"] == "hit" and "x-upstream-request-id" not in cached.headers


def test_one_model_by_id(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, models=[{"name": "fast", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]}]))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0)
    assert client.models.retrieve("fast").owned_by == "sluice"
    listed = client.models.list().data
    upstream = next(m for m in listed if m.id.startswith("openai/"))
    assert client.models.retrieve(upstream.id).id == upstream.id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
