"""Gemini and Ollama end to end: the official ``openai`` SDK → the real Sluice server → the fakes.

The SDK must not be able to tell who answered: every answer is parsed by
its own types, streams included, and upstream errors reach it in OpenAI's
shape with the upstream's status and message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.gemini import INVALID_KEY, FakeGemini, candidate, error_body, response, usage_metadata
from tests.fakes.ollama import FakeOllama, message_line
from tests.fakes.server import Reply
from tests.proxy_process import ProxyProcess

GEMINI = "gemini/gemini-2.5-flash"
GEMINI_3 = "gemini/gemini-3-pro-preview"
OLLAMA = "ollama/llama3.1"
BOTH = pytest.mark.parametrize("model", [GEMINI, OLLAMA])
PNG_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def config(gemini: FakeGemini, ollama: FakeOllama, **sections: Any) -> dict[str, Any]:
    """Both translated providers on the fakes; fast retries, no cache so tests stay independent."""
    providers = [
        {"name": "gemini", "type": "gemini", "base_url": gemini.url + "/v1beta", "api_key": "g-secret"},
        {"name": "ollama", "type": "ollama", "base_url": ollama.url},
    ]
    data: dict[str, Any] = {
        "providers": providers,
        "retry": {"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5},
        "cache": {"enabled": False},
        "pricing_file": None,
    }
    data.update(sections)
    return data


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, _gemini_server: FakeGemini, _ollama_server: FakeOllama) -> Iterator[ProxyProcess]:
    """One server for the module (the fakes' URLs never change); ``start_proxy`` where a test needs its own config."""
    process = ProxyProcess(config(_gemini_server, _ollama_server), tmp_path_factory.mktemp("e2e"))
    yield process.wait_ready()
    process.stop()


@pytest.fixture
def client(proxy: ProxyProcess, fake_gemini: FakeGemini, fake_ollama: FakeOllama) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def stream(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.chat.completions.create(stream=True, **kwargs))


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- answers ------------------------------------------------------------------------------------


@BOTH
def test_chat(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=ask("hello there"))
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == model
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 3
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 3


def test_gemini_key_goes_in_the_header_never_the_url(client: openai.OpenAI, fake_gemini: FakeGemini, proxy: ProxyProcess) -> None:
    client.chat.completions.create(model=GEMINI, messages=ask("hi"))
    call = fake_gemini.calls(":generateContent")[0]
    assert call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call.headers["x-goog-api-key"] == "g-secret"
    assert "g-secret" not in call.query and "client-key" not in str(call.headers)
    assert "g-secret" not in proxy.logs()


@BOTH
def test_stream_with_usage(client: openai.OpenAI, model: str) -> None:
    chunks = stream(client, model=model, messages=ask("one two three"), stream_options={"include_usage": True})
    assert streamed_text(chunks) == "echo: one two three"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {model}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


@BOTH
def test_stream_without_usage_asked(client: openai.OpenAI, model: str) -> None:
    chunks = stream(client, model=model, messages=ask("hi"))
    assert streamed_text(chunks) == "echo: hi"
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@BOTH
def test_json_mode(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=ask("hi"), response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content) == {"echo": "hi"}
    schema = {"type": "json_schema", "json_schema": {"name": "echo", "schema": {"type": "object", "properties": {"echo": {"type": "string"}}}}}
    answer = client.chat.completions.create(model=model, messages=ask("hey"), response_format=schema)
    assert json.loads(answer.choices[0].message.content) == {"echo": "hey"}


@pytest.mark.parametrize(("model", "seen"), [(GEMINI, "[image/png]"), (OLLAMA, "[image]")])
def test_images(client: openai.OpenAI, model: str, seen: str) -> None:
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PNG_URL}}]
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == f"echo: what is this {seen}"


def test_image_urls_gemini_fetches_and_ollama_refuses(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    answer = client.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == "echo: [image/png https://example.com/cat.png]"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=OLLAMA, messages=[{"role": "user", "content": content}])
    assert refused.value.body["param"] == "messages[0].content[0]"
    assert fake_ollama.calls("/api/chat") == []


@BOTH
def test_stop_and_max_tokens(client: openai.OpenAI, model: str) -> None:
    stopped = client.chat.completions.create(model=model, messages=ask("a b STOP c"), stop=["STOP"])
    assert stopped.choices[0].message.content == "echo: a b "
    assert stopped.choices[0].finish_reason == "stop"
    cut = client.chat.completions.create(model=model, messages=ask("a b c d e"), max_tokens=3)
    assert cut.choices[0].message.content == "echo: a b" and cut.choices[0].finish_reason == "length"
    chunks = stream(client, model=model, messages=ask("a b c d e"), max_completion_tokens=2)
    assert streamed_text(chunks) == "echo: a" and chunks[-1].choices[0].finish_reason == "length"


def test_gemini_n_choices(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=GEMINI, messages=ask("hi"), n=2)
    assert [(c.index, c.message.content) for c in answer.choices] == [(0, "echo: hi"), (1, "echo: hi")]


def test_gemini_usage_details(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.script(Reply(json=response([candidate([{"text": "42"}])], usage_metadata(10, 2, thoughts=30, cached=8))))
    usage = client.chat.completions.create(model=GEMINI, messages=ask("hi")).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 32, 42)
    assert usage.prompt_tokens_details.cached_tokens == 8
    assert usage.completion_tokens_details.reasoning_tokens == 30


# -- tools --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [GEMINI, GEMINI_3, OLLAMA])
def test_tools_round_trip(client: openai.OpenAI, model: str) -> None:
    """Gemini 3 checks the call's thought signature on the way back, as the real API does."""
    messages: list[dict[str, Any]] = ask("weather in Paris?")
    first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'})
    second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert "21" in second.choices[0].message.content


@pytest.mark.parametrize("model", [GEMINI, GEMINI_3, OLLAMA])
def test_streamed_tool_call_finishes_with_tool_calls(client: openai.OpenAI, model: str) -> None:
    """The fake Gemini sends STOP in an event of its own after the call, like newer models."""
    chunks = stream(client, model=model, messages=ask("weather?"), tools=TOOLS, stream_options={"include_usage": True})
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None


def test_gemini_3_accepts_a_history_without_signatures(client: openai.OpenAI) -> None:
    """A tool call from another provider (or an old log) has no signature; Gemini 3 must still answer."""
    history = ask("weather?") + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "sunny"},
    ]
    answer = client.chat.completions.create(model=GEMINI_3, messages=history, tools=TOOLS)
    assert answer.choices[0].message.content == 'echo: {"output":"sunny"}'


def test_translated_stream_is_cached_whole_and_replayed(
    start_proxy: Callable[..., ProxyProcess], fake_gemini: FakeGemini, fake_ollama: FakeOllama
) -> None:
    """The replay keeps the tool call id, so a Gemini 3 signature survives the cache too."""
    proxy = start_proxy(config(fake_gemini, fake_ollama, cache={"enabled": True}))
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    answers = []
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.create(
            model=GEMINI_3, messages=ask("weather?"), tools=TOOLS, stream=True, stream_options={"include_usage": True}
        )
        assert raw.headers["x-sluice-cache"] == expected
        answers.append(list(raw.parse()))
    assert len(fake_gemini.calls(":streamGenerateContent")) == 1
    first, replayed = ([call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()] for chunks in answers)
    assert [c.id for c in replayed] == [c.id for c in first] and "__thought__" in first[0].id
    assert [c.choices[0].finish_reason for c in answers[1] if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert answers[1][-1].usage == answers[0][-1].usage


def test_forced_tool_choice(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    answer = client.chat.completions.create(model=GEMINI, messages=ask("x"), tools=TOOLS, tool_choice=forced)
    assert answer.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert fake_gemini.calls(":generateContent")[0].json["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=OLLAMA, messages=ask("x"), tools=TOOLS, tool_choice=forced)
    assert refused.value.body["param"] == "tool_choice"


# -- errors -------------------------------------------------------------------------------------


def test_gemini_upstream_error_reaches_the_client(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.script(Reply(status=400, json=error_body(400, "Request contains an invalid argument.")))
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(model=GEMINI, messages=ask("hi"))
    assert failed.value.status_code == 400
    assert failed.value.body["message"] == "Request contains an invalid argument."
    assert failed.value.body["code"] == "INVALID_ARGUMENT"


def test_unknown_models_are_upstream_404s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as gemini_missing:
        client.chat.completions.create(model="gemini/gemini-9", messages=ask("hi"))
    assert "models/gemini-9 is not found" in gemini_missing.value.body["message"]
    with pytest.raises(openai.NotFoundError) as ollama_missing:
        client.chat.completions.create(model="ollama/llama9", messages=ask("hi"), stream=True)
    assert ollama_missing.value.body["message"] == 'model "llama9" not found, try pulling it first'


def test_invalid_gemini_key_is_reported_but_never_shown(
    start_proxy: Callable[..., ProxyProcess], fake_gemini: FakeGemini, fake_ollama: FakeOllama
) -> None:
    settings = config(fake_gemini, fake_ollama)
    settings["providers"][0]["api_key"] = INVALID_KEY
    proxy = start_proxy(settings)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(model=GEMINI, messages=ask("hi"))
    assert failed.value.body["message"] == "API key not valid. Please pass a valid API key."
    assert INVALID_KEY not in failed.value.response.text and INVALID_KEY not in proxy.logs()


def test_gemini_key_passes_through_when_none_is_configured(
    start_proxy: Callable[..., ProxyProcess], fake_gemini: FakeGemini, fake_ollama: FakeOllama
) -> None:
    settings = config(fake_gemini, fake_ollama)
    del settings["providers"][0]["api_key"]
    settings["providers"][0]["pass_client_key"] = True
    proxy = start_proxy(settings)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-gemini-key", max_retries=0)
    assert client.chat.completions.create(model=GEMINI, messages=ask("hi")).choices[0].message.content == "echo: hi"
    assert fake_gemini.calls(":generateContent")[0].headers["x-goog-api-key"] == "client-gemini-key"


@BOTH
def test_unsupported_parameter_is_a_400_naming_it(client: openai.OpenAI, model: str, fake_gemini: FakeGemini, fake_ollama: FakeOllama) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=ask("hi"), logit_bias={"50256": -100})
    assert refused.value.body["param"] == "logit_bias"
    assert "'logit_bias'" in refused.value.body["message"]
    assert fake_gemini.requests == [] and fake_ollama.requests == []


@BOTH
def test_harmless_openai_parameters_are_accepted(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(
        model=model, messages=ask("hi"), user="u-1", store=False, metadata={"k": "v"}, parallel_tool_calls=False, seed=1, temperature=0
    )
    assert answer.choices[0].message.content == "echo: hi"


def test_gemini_error_event_mid_stream(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.script(
        fake_gemini.reply_stream([response([candidate([{"text": "partial"}], None)]), error_body(500, "Internal error encountered.")])
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.chat.completions.create(model=GEMINI, messages=ask("hi"), stream=True):
            received.append(chunk)
    assert streamed_text(received) == "partial"
    assert "Internal error encountered." in failed.value.message


def test_ollama_error_line_mid_stream(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(fake_ollama.reply_stream([message_line("llama3.1", "partial"), {"error": "model runner has unexpectedly stopped"}]))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.chat.completions.create(model=OLLAMA, messages=ask("hi"), stream=True):
            received.append(chunk)
    assert streamed_text(received) == "partial"
    assert "model runner has unexpectedly stopped" in failed.value.message


# -- embeddings and models ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gemini/text-embedding-004", "ollama/nomic-embed-text"])
def test_embeddings(client: openai.OpenAI, model: str) -> None:
    default = client.embeddings.create(model=model, input=["a", "bb"])  # the SDK asks for base64 by default
    assert [d.embedding for d in default.data] == [[1.0, 0.5, -0.25], [2.0, 0.5, -0.25]]
    assert [d.index for d in default.data] == [0, 1] and default.model == model
    floats = client.embeddings.create(model=model, input="abc", encoding_format="float", dimensions=2)
    assert floats.data[0].embedding == [3.0, 0.5]


def test_models_list_both_providers(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"gemini/gemini-2.5-flash", "gemini/text-embedding-004", "ollama/llama3.1:latest"} <= ids
    assert not any(i.startswith("gemini/models/") for i in ids)


def test_gemini_model_list_follows_pages(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.max_page_size = 2
    try:
        ids = {m.id for m in client.models.list()}
    finally:
        fake_gemini.max_page_size = FakeGemini.max_page_size
    assert {f"gemini/{m}" for m in fake_gemini.models} <= ids
    assert len(fake_gemini.calls("/models")) == 3


# -- fallback across providers -------------------------------------------------------------------


def test_alias_falls_over_from_a_failing_gemini_to_ollama(start_proxy, fake_gemini: FakeGemini, fake_ollama: FakeOllama) -> None:
    alias = {"name": "smart", "targets": [{"provider": "gemini", "model": "gemini-2.5-flash"}, {"provider": "ollama", "model": "llama3.1"}]}
    proxy = start_proxy(config(fake_gemini, fake_ollama, models=[alias]))
    unavailable = Reply(status=503, json=error_body(503, "The model is overloaded.", "UNAVAILABLE"))
    fake_gemini.script(unavailable, unavailable)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=ask("hello fallback"))
    assert raw.headers["x-sluice-provider"] == "ollama"
    assert raw.headers["x-sluice-attempts"] == "3"
    answer = raw.parse()
    assert "hello fallback" in (answer.choices[0].message.content or "")
    assert answer.model == "smart"
    assert len(fake_gemini.calls(":generateContent")) == 2 and len(fake_ollama.calls("/api/chat")) == 1
