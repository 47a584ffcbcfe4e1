"""``/v1/messages`` end to end: the official ``anthropic`` SDK → the real Sluice server → every provider's fake.

The SDK must not be able to tell that an OpenAI, Gemini or Ollama model
answered: answers, streams (through the SDK's own accumulator), tool rounds,
token counts and errors are read by its own types.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.anthropic import error_body as anthropic_error
from tests.fakes.anthropic import message as anthropic_message
from tests.fakes.anthropic import stream_events as anthropic_stream_events
from tests.fakes.anthropic import text as anthropic_text
from tests.fakes.anthropic import usage as anthropic_usage
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI, chunk, completion, stream_chunks, usage
from tests.fakes.server import Reply
from tests.proxy_process import ProxyProcess
from tests.test_cache_dedup import _until_joined

OPENAI = "openai/gpt-4o-mini"
GEMINI = "gemini/gemini-2.5-flash"
OLLAMA = "ollama/llama3.1"
ANTHROPIC = "anthropic/claude-sonnet-4-5-20250929"
TRANSLATED = pytest.mark.parametrize("model", [OPENAI, GEMINI, OLLAMA])
EVERY = pytest.mark.parametrize("model", [OPENAI, GEMINI, OLLAMA, ANTHROPIC])
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HELLO = [{"role": "user", "content": "Hello there"}]


def providers(openai: FakeOpenAI, gemini: FakeGemini, ollama: FakeOllama, anthropic_fake: FakeAnthropic) -> list[dict[str, Any]]:
    return [
        {"name": "openai", "type": "openai", "base_url": f"{openai.url}/v1", "api_key": "sk-openai-secret"},
        {"name": "gemini", "type": "gemini", "base_url": f"{gemini.url}/v1beta", "api_key": "g-secret"},
        {"name": "ollama", "type": "ollama", "base_url": ollama.url},
        {"name": "anthropic", "type": "anthropic", "base_url": f"{anthropic_fake.url}/v1", "api_key": "sk-ant-secret"},
    ]


def config(servers: tuple[FakeOpenAI, FakeGemini, FakeOllama, FakeAnthropic], **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "providers": providers(*servers),
        "retry": {"max_attempts": 1},
        "cache": {"enabled": False},
        "pricing_file": None,
    }
    data.update(sections)
    return data


@pytest.fixture
def servers(
    fake_openai: FakeOpenAI, fake_gemini: FakeGemini, fake_ollama: FakeOllama, fake_anthropic: FakeAnthropic
) -> tuple[FakeOpenAI, FakeGemini, FakeOllama, FakeAnthropic]:
    return fake_openai, fake_gemini, fake_ollama, fake_anthropic


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    _openai_server: FakeOpenAI,
    _gemini_server: FakeGemini,
    _ollama_server: FakeOllama,
    _anthropic_server: FakeAnthropic,
) -> Iterator[ProxyProcess]:
    """One server for the module, no cache; ``start_proxy`` where a test needs its own config."""
    servers = (_openai_server, _gemini_server, _ollama_server, _anthropic_server)
    process = ProxyProcess(config(servers), tmp_path_factory.mktemp("messages"))
    yield process.wait_ready()
    process.stop()


@pytest.fixture
def client(proxy: ProxyProcess, servers: tuple[Any, ...]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)


def sdk_client(proxy: ProxyProcess, key: str = "client-key") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


# -- answers and streams from every provider --


@EVERY
def test_create(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=64, messages=HELLO)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "echo: Hello there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@EVERY
def test_stream_is_accumulated_by_the_sdk(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == "echo: Hello there"
    assert final.id.startswith("msg_") and final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_stream_usage_is_the_upstreams(client: anthropic.Anthropic, fake_openai: FakeOpenAI) -> None:
    """``message_start`` carries an estimate; ``message_delta`` the upstream's counts, cache reads split off."""
    counted = usage(prompt=2000, completion=9)
    counted["prompt_tokens_details"]["cached_tokens"] = 1536
    chunks = [chunk("chatcmpl-u1", "gpt-4o-mini", {"role": "assistant", "content": "Hi"}), chunk("chatcmpl-u1", "gpt-4o-mini", {}, "stop")]
    fake_openai.script(Reply(chunks=[*chunks, {**chunk("chatcmpl-u1", "gpt-4o-mini", {}), "choices": [], "usage": counted}]))
    with client.messages.stream(model=OPENAI, max_tokens=64, messages=HELLO) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = events[0]
    assert start.type == "message_start" and start.message.usage.input_tokens > 0
    assert final.id == "msg_u1"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (464, 1536, 9)


# -- a tool round --


@EVERY
def test_tool_use_round_trip(client: anthropic.Anthropic, model: str) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model=model, max_tokens=256, tools=[WEATHER], messages=question)
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.id.startswith("toolu_") and call.name == "get_weather" and call.input == {"city": "Paris"}
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}
    history = [*question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = client.messages.create(model=model, max_tokens=256, tools=[WEATHER], messages=history)
    assert second.stop_reason == "end_turn"
    assert "18C and sunny" in second.content[0].text


@pytest.mark.parametrize("model", [GEMINI, "gemini/gemini-3-pro-preview", OLLAMA])
def test_streamed_tool_round(client: anthropic.Anthropic, model: str) -> None:
    """Gemini 3 signs its calls; the signature rides in the tool use id and must come back with the result."""
    question = [{"role": "user", "content": "Weather in Paris?"}]
    with client.messages.stream(model=model, max_tokens=256, tools=[WEATHER], messages=question) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use" and first.content[-1].input == {"city": "Paris"}
    assert ("__thought__" in first.content[-1].id) == ("gemini-3" in model)
    result = {"type": "tool_result", "tool_use_id": first.content[-1].id, "content": "18C"}
    history = [*question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    with client.messages.stream(model=model, max_tokens=256, tools=[WEATHER], messages=history) as stream:
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn" and "18C" in second.content[0].text


def test_tool_result_reaches_openai_with_its_call_id(client: anthropic.Anthropic, fake_openai: FakeOpenAI) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    with client.messages.stream(model=OPENAI, max_tokens=256, tools=[WEATHER], messages=question) as stream:
        first = stream.get_final_message()
    call = first.content[0]
    assert fake_openai.calls("/chat/completions")[0].json["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18C", "is_error": False}
    client.messages.create(
        model=OPENAI,
        max_tokens=256,
        tools=[WEATHER],
        messages=[*question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}],
    )
    sent = fake_openai.calls("/chat/completions")[1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == "call_" + call.id.removeprefix("toolu_")


# -- count_tokens --


@TRANSLATED
def test_count_tokens_is_estimated_without_an_upstream_call(client: anthropic.Anthropic, servers: tuple[Any, ...], model: str) -> None:
    plain = client.messages.count_tokens(model=model, messages=HELLO)
    with_tools = client.messages.count_tokens(model=model, messages=HELLO, tools=[WEATHER])
    assert 0 < plain.input_tokens < with_tools.input_tokens
    assert all(not server.requests for server in servers)


def test_count_tokens_asks_anthropic(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    counted = client.messages.count_tokens(model=ANTHROPIC, messages=HELLO)
    assert counted.input_tokens > 0
    assert fake_anthropic.calls("/v1/messages/count_tokens")[0].json["model"] == "claude-sonnet-4-5-20250929"


def counting_config(servers: tuple[Any, ...], **sections: Any) -> dict[str, Any]:
    """Two anthropic providers on the one fake, and aliases over them and OpenAI."""
    second = {**providers(*servers)[3], "name": "anthropic-b", "api_key": "sk-ant-other"}
    claude = {"provider": "anthropic", "model": "claude-sonnet-4-5"}
    aliases = [
        {"name": "claude-twice", "targets": [claude, {"provider": "anthropic-b", "model": "claude-sonnet-4-5"}]},
        {"name": "claude-or-gpt", "targets": [claude, {"provider": "openai", "model": "gpt-4o-mini"}]},
        {"name": "claude", "targets": [claude]},
        {"name": "gpt", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
    ]
    return config(servers, providers=[*providers(*servers), second], models=aliases, **sections)


def test_count_tokens_falls_back_to_the_next_target(start_proxy: Any, servers: tuple[Any, ...]) -> None:
    fake_anthropic = servers[3]
    client = sdk_client(start_proxy(counting_config(servers)))
    fake_anthropic.script(Reply(status=529, json=anthropic_error("overloaded_error", "Overloaded")), Reply(json={"input_tokens": 4242}))
    assert client.messages.count_tokens(model="claude-twice", messages=HELLO).input_tokens == 4242
    keys = [call.headers["x-api-key"] for call in fake_anthropic.calls("/count_tokens")]
    assert keys == ["sk-ant-secret", "sk-ant-other"]


def test_count_tokens_estimates_when_no_anthropic_target_can_count(start_proxy: Any, servers: tuple[Any, ...]) -> None:
    """A failed count, or an open breaker, is answered with tiktoken's estimate; a client error passes through."""
    fake_anthropic = servers[3]
    proxy = start_proxy(counting_config(servers, breaker={"failure_threshold": 1, "reset_timeout_seconds": 600}))
    client = sdk_client(proxy)
    estimate = client.messages.count_tokens(model="gpt", messages=HELLO).input_tokens
    fake_anthropic.script(Reply(status=500, json=anthropic_error("api_error", "Internal server error")))
    assert client.messages.count_tokens(model="claude-or-gpt", messages=HELLO).input_tokens == estimate
    assert client.messages.count_tokens(model="claude", messages=HELLO).input_tokens == estimate  # breaker open
    assert len(fake_anthropic.calls("/count_tokens")) == 1
    fake_anthropic.script(Reply(status=400, json=anthropic_error("invalid_request_error", "messages: bad")))
    with pytest.raises(anthropic.BadRequestError, match="messages: bad"):
        client.messages.count_tokens(model="claude-twice", messages=HELLO)  # the second target counts; its 400 stands


def test_count_tokens_names_a_bad_field(proxy: ProxyProcess) -> None:
    response = httpx.post(f"{proxy.url}/v1/messages/count_tokens", json={"model": OPENAI, "messages": "Hello"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error" and "messages" in response.json()["error"]["message"]


# -- errors in Anthropic's shape --


def test_missing_max_tokens_is_a_400(proxy: ProxyProcess) -> None:
    response = httpx.post(f"{proxy.url}/v1/messages", json={"model": OPENAI, "messages": HELLO})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_uncarried_parameter_is_a_400_naming_it(client: anthropic.Anthropic, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=OPENAI, max_tokens=64, messages=HELLO, tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert caught.value.body["error"]["message"].startswith("tools[0].type: The tool type 'web_search_20250305' cannot be carried")
    assert not fake_openai.requests


def test_unknown_model_is_a_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="nowhere/model", max_tokens=64, messages=HELLO)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"


def test_upstream_error_speaks_anthropic(client: anthropic.Anthropic, fake_openai: FakeOpenAI) -> None:
    error = {"error": {"message": "This model's maximum context length is 128000 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    fake_openai.script(Reply(status=400, json=error))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=OPENAI, max_tokens=64, messages=HELLO)
    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": error["error"]["message"]}}


def test_anthropic_overloaded_is_passed_through(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Reply(status=529, json=anthropic_error("overloaded_error", "Overloaded")))
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=ANTHROPIC, max_tokens=64, messages=HELLO)
    assert caught.value.status_code == 529
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
def test_stream_cut_midway_ends_with_an_error_event(client: anthropic.Anthropic, servers: tuple[Any, ...], model: str) -> None:
    fake = servers[0] if model == OPENAI else servers[3]
    fake.script(Reply(chunks=_stream_of(model), cut_after=3))
    with pytest.raises(anthropic.APIStatusError) as caught, client.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
        stream.get_final_message()
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "api_error"


def test_proxy_keys_are_read_from_x_api_key(start_proxy: Any, servers: tuple[Any, ...]) -> None:
    proxy = start_proxy(config(servers, auth={"keys": [{"name": "team", "key": "sk-team-1"}]}))
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk_client(proxy, "sk-wrong").messages.create(model=OPENAI, max_tokens=64, messages=HELLO)
    assert caught.value.status_code == 401 and caught.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        sdk_client(proxy, "sk-wrong").messages.count_tokens(model=OPENAI, messages=HELLO)
    message = sdk_client(proxy, "sk-team-1").messages.create(model=OPENAI, max_tokens=64, messages=HELLO)
    assert message.content[0].text == "echo: Hello there"
    assert sdk_client(proxy, "sk-team-1").messages.count_tokens(model=OPENAI, messages=HELLO).input_tokens > 0


def test_sluice_own_limits_speak_anthropic(start_proxy: Any, servers: tuple[Any, ...]) -> None:
    keys = {"keys": [{"name": "team", "key": "sk-team-1", "rpm": 1}]}
    proxy = start_proxy(config(servers, auth=keys, server={"max_body_bytes": 2048}))
    client = sdk_client(proxy, "sk-team-1")
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.create(model=OPENAI, max_tokens=64, messages=[{"role": "user", "content": "x" * 4096}])
    assert too_large.value.status_code == 413 and too_large.value.body["error"]["type"] == "request_too_large"
    client.messages.create(model=OPENAI, max_tokens=64, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=OPENAI, max_tokens=64, messages=HELLO)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) >= 1


# -- cache and dedup --


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
def test_cache_hit_replays_as_json_and_as_stream(start_proxy: Any, servers: tuple[Any, ...], model: str) -> None:
    """A translated answer is stored in the hub's form, a native one in Anthropic's: both replay the same."""
    proxy = start_proxy(config(servers, cache={"enabled": True}))
    client = sdk_client(proxy)
    ask = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "cache me"}]}
    first = client.messages.with_raw_response.create(**ask)
    again = client.messages.with_raw_response.create(**ask)
    assert (first.headers["x-sluice-cache"], again.headers["x-sluice-cache"]) == ("miss", "hit")
    assert again.parse().to_dict() == first.parse().to_dict()
    with client.messages.stream(**ask) as stream:
        replayed = stream.get_final_message()
        assert stream.response.headers["x-sluice-cache"] == "hit"
    assert replayed.to_dict(exclude_none=True) == first.parse().to_dict(exclude_none=True)
    assert sum(len(server.calls("/messages")) + len(server.calls("/chat/completions")) for server in servers) == 1


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
def test_streamed_answer_is_cached_whole(start_proxy: Any, servers: tuple[Any, ...], model: str) -> None:
    """A stream is assembled for the cache (hub chunks, or Anthropic's own events for a native one)."""
    proxy = start_proxy(config(servers, cache={"enabled": True}))
    client = sdk_client(proxy)
    ask = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "stream then cache"}]}
    with client.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    cached = client.messages.with_raw_response.create(**ask)
    assert cached.headers["x-sluice-cache"] == "hit"
    assert cached.parse().to_dict(exclude_none=True) == streamed.to_dict(exclude_none=True)


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
def test_sessions_share_the_cache_whatever_their_user_id(start_proxy: Any, servers: tuple[Any, ...], model: str) -> None:
    """``metadata.user_id`` is the Messages API's ``user``, which the key ignores: Claude Code sends a new
    one each session. The upstream still gets it: natively the body as sent (model routed), translated as ``user``."""
    proxy = start_proxy(config(servers, cache={"enabled": True}))
    client = sdk_client(proxy)
    ask = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "same question"}]}
    first = client.messages.with_raw_response.create(**ask, metadata={"user_id": "user_abc_session_1"})
    again = client.messages.with_raw_response.create(**ask, metadata={"user_id": "user_abc_session_2"})
    assert (first.headers["x-sluice-cache"], again.headers["x-sluice-cache"]) == ("miss", "hit")
    assert again.parse().to_dict() == first.parse().to_dict()
    if model == ANTHROPIC:
        (sent,) = servers[3].calls("/messages")
        assert sent.json == {**orjson.loads(first.http_request.content), "model": "claude-sonnet-4-5-20250929"}
    else:
        (sent,) = servers[0].calls("/chat/completions")
        assert sent.json["user"] == "user_abc_session_1"


async def test_identical_requests_in_flight_make_one_upstream_call(start_proxy: Any, servers: tuple[Any, ...], fake_openai: FakeOpenAI) -> None:
    proxy = start_proxy(config(servers, cache={"enabled": True}))
    gate = threading.Event()
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "shared answer"), gate=gate))
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    ask = {"model": OPENAI, "max_tokens": 64, "messages": [{"role": "user", "content": "dedup me"}]}
    tasks = [asyncio.create_task(client.messages.with_raw_response.create(**ask)) for _ in range(5)]
    async with httpx.AsyncClient() as http:
        await _until_joined(proxy, http, 4)
    gate.set()
    responses = await asyncio.gather(*tasks)
    messages = [await r.parse() for r in responses]
    assert {m.content[0].text for m in messages} == {"shared answer"}
    assert len({m.id for m in messages}) == 1
    assert sum(r.headers.get("x-sluice-dedup") == "joined" for r in responses) == 4
    assert len(fake_openai.calls("/chat/completions")) == 1


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
async def test_identical_streams_in_flight_share_one_upstream_call(start_proxy: Any, servers: tuple[Any, ...], model: str) -> None:
    """Each follower gets the whole stream, rendered for it (translated) or passed on (native)."""
    proxy = start_proxy(config(servers, cache={"enabled": True}))
    gate = threading.Event()
    fake = servers[0] if model == OPENAI else servers[3]
    fake.script(Reply(chunks=_stream_of(model), gate=gate))
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="client-key", max_retries=0)

    async def final() -> anthropic.types.Message:
        async with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "share it"}]) as stream:
            return await stream.get_final_message()

    tasks = [asyncio.create_task(final()) for _ in range(3)]
    async with httpx.AsyncClient() as http:
        await _until_joined(proxy, http, 2)
    gate.set()
    messages = await asyncio.gather(*tasks)
    assert [m.content[0].text for m in messages] == ["streamed to all"] * 3
    assert len({m.id for m in messages}) == 1
    assert len(fake.requests) == 1


def _stream_of(model: str) -> list[Any]:
    if model == OPENAI:
        return stream_chunks("gpt-4o-mini", "streamed to all")
    answer = anthropic_message([anthropic_text("streamed to all")], usage_data=anthropic_usage(12, 3))
    return anthropic_stream_events(answer)


# -- a Claude Code-shaped session on an OpenAI model --

CLAUDE_CODE_TOOLS = [
    "Task", "Bash", "Glob", "Grep", "LS", "ExitPlanMode", "Read", "Edit", "MultiEdit", "Write",
    "NotebookEdit", "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillShell", "SlashCommand",
]  # fmt: skip


def claude_code_request() -> dict[str, Any]:
    """What Claude Code sends: system blocks and the last tool marked for caching, many tools, thinking, a stream."""
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"file_path": {"type": "string", "description": "The absolute path"}},
        "required": ["file_path"],
        "additionalProperties": False,
    }
    tools = [{"name": name, "description": f"The {name} tool.", "input_schema": schema} for name in CLAUDE_CODE_TOOLS]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": OPENAI,
        "max_tokens": 32000,
        "stream": True,
        "temperature": 1,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "metadata": {"user_id": "user_4f2a_account__session_91c3"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks.\n\n# Tone\nBe concise.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nThe todo list is empty.\n</system-reminder>"},
                    {"type": "text", "text": "Fix the failing test in tests/test_app.py", "cache_control": {"type": "ephemeral"}},
                ],
            }
        ],
    }


def test_claude_code_session_streams_from_an_openai_model(client: anthropic.Anthropic, proxy: ProxyProcess, fake_openai: FakeOpenAI) -> None:
    cid, model = "chatcmpl-cc1", "gpt-4o-mini"
    counted = usage(prompt=3100, completion=120)
    counted["prompt_tokens_details"]["cached_tokens"] = 2048
    call_head = {"index": 0, "id": "call_cc1", "type": "function", "function": {"name": "Read", "arguments": ""}}
    chunks = [
        chunk(cid, model, {"role": "assistant", "content": ""}),
        chunk(cid, model, {"reasoning_content": "The test fails; "}),
        chunk(cid, model, {"reasoning_content": "read it first."}),
        chunk(cid, model, {"content": "Let me read the test."}),
        chunk(cid, model, {"tool_calls": [call_head]}),
        chunk(cid, model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"file_path": '}}]}),
        chunk(cid, model, {"tool_calls": [{"index": 0, "function": {"arguments": '"/repo/tests/test_app.py"}'}}]}),
        chunk(cid, model, {}, "tool_calls"),
        {**chunk(cid, model, {}), "choices": [], "usage": counted},
    ]
    fake_openai.script(Reply(chunks=chunks))
    body = claude_code_request()
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body, headers={"x-api-key": "client-key", "anthropic-version": "2023-06-01"}) as response:
        raw = response.read()
    names = [line.removeprefix(b"event: ").decode() for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    start = orjson.loads(raw.split(b"\n")[1].removeprefix(b"data: "))
    assert start["message"]["usage"]["input_tokens"] > 500  # tiktoken's estimate of the system, tools and turn

    fake_openai.script(Reply(chunks=chunks))
    del body["stream"]
    unnamed = {name: body.pop(name) for name in ("temperature", "context_management")}  # not arguments of the SDK's stream()
    with client.messages.stream(**body, extra_body=unnamed) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "The test fails; read it first."
    assert final.content[2].id == "toolu_cc1" and final.content[2].input == {"file_path": "/repo/tests/test_app.py"}
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (1052, 2048, 120)

    sent = fake_openai.calls("/chat/completions")[-1]
    assert b"cache_control" not in sent.body
    upstream = sent.json
    assert upstream["model"] == "gpt-4o-mini" and upstream["stream"] is True
    assert upstream["reasoning_effort"] == "high" and upstream["max_completion_tokens"] == 32000
    assert upstream["user"] == "user_4f2a_account__session_91c3"
    assert upstream["messages"][0]["role"] == "system"
    assert upstream["messages"][0]["content"].startswith("You are Claude Code")
    assert [tool["function"]["name"] for tool in upstream["tools"]] == CLAUDE_CODE_TOOLS


def test_a_wrong_method_on_messages_is_answered_in_anthropics_shape(proxy) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{proxy.url}/v1/messages")
    assert response.status_code == 405
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"


def test_claude_code_session_reaches_anthropic_byte_for_byte(start_proxy: Any, servers: tuple[Any, ...]) -> None:
    """Native: system blocks, cache_control markers, thinking and every other field arrive as sent."""
    fake_anthropic = servers[3]
    proxy = start_proxy(config(servers, routing={"default_provider": "anthropic"}))
    body = {**claude_code_request(), "model": "claude-sonnet-4-5-20250929"}
    del body["context_management"]  # a beta field the fake (like the API without its beta header) refuses
    raw = orjson.dumps(body)
    headers = {"x-api-key": "client-key", "anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14", "content-type": "application/json"}
    with httpx.stream("POST", f"{proxy.url}/v1/messages", content=raw, headers=headers) as response:
        assert response.status_code == 200, response.read()
        events = [line for line in response.iter_lines() if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
    (sent,) = fake_anthropic.calls("/messages")
    assert sent.body == raw
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent.headers["x-api-key"] == "sk-ant-secret"


def test_an_overloaded_anthropic_falls_back_to_openai(start_proxy: Any, servers: tuple[Any, ...]) -> None:
    fake_openai, fake_anthropic = servers[0], servers[3]
    alias = {"name": "claude-or-gpt", "targets": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}, {"provider": "openai", "model": "gpt-4o-mini"}]}
    proxy = start_proxy(config(servers, models=[alias]))
    fake_anthropic.script(Reply(status=529, json=anthropic_error("overloaded_error", "Overloaded")))
    response = httpx.post(
        f"{proxy.url}/v1/messages",
        json={"model": "claude-or-gpt", "max_tokens": 64, "messages": HELLO},
        headers={"x-api-key": "client-key", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 200
    assert response.headers["x-sluice-provider"] == "openai" and response.headers["x-sluice-attempts"] == "2"
    answer = anthropic.types.Message.model_validate(response.json())
    assert answer.content[0].text == "echo: Hello there"
    assert len(fake_anthropic.calls("/messages")) == 1 and len(fake_openai.calls("/chat/completions")) == 1
