"""The fake Gemini and Ollama servers, proven with the official clients and types.

If ``google-genai`` and ``ollama`` accept what the fakes send (and the fakes
refuse what the real services refuse), tests of the translation against the
fakes say something about the real services.
"""

from __future__ import annotations

import base64

import httpx
import ollama
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fakes.gemini import INVALID_KEY, FakeGemini, candidate, error_body, response, usage_metadata
from tests.fakes.ollama import FakeOllama, done_line, message_line
from tests.fakes.server import Reply

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


_clients: list[genai.Client] = []


def gemini_client(fake: FakeGemini, key: str = "g-secret") -> genai.Client:
    """Kept referenced: a collected ``genai.Client`` closes the HTTP client its ``models`` use."""
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=fake.url, api_version="v1beta"))
    _clients.append(client)
    return client


def gemini_post(fake: FakeGemini, path: str, payload: dict, key: str = "g-secret") -> httpx.Response:
    return httpx.post(f"{fake.url}/v1beta/{path}", json=payload, headers={"x-goog-api-key": key})


def user(text: str) -> dict:
    return {"role": "user", "parts": [{"text": text}]}


# -- Gemini -------------------------------------------------------------------------------------


def test_gemini_generate_content_echoes_with_usage(fake_gemini: FakeGemini) -> None:
    result = gemini_client(fake_gemini).models.generate_content(model="gemini-2.5-flash", contents="hello there")
    assert result.text == "echo: hello there"
    assert result.candidates[0].finish_reason == types.FinishReason.STOP
    assert result.usage_metadata.candidates_token_count == 3
    assert result.usage_metadata.total_token_count == result.usage_metadata.prompt_token_count + 3
    call = fake_gemini.calls(":generateContent")[0]
    assert call.headers["x-goog-api-key"] == "g-secret"
    assert call.json["contents"] == [user("hello there")]


def test_gemini_raw_payloads_validate_against_the_sdk_types(fake_gemini: FakeGemini) -> None:
    tools = [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": WEATHER}]}]
    plain = gemini_post(fake_gemini, "models/gemini-2.5-flash:generateContent", {"contents": [user("hi")]})
    called = gemini_post(fake_gemini, "models/gemini-3-pro-preview:generateContent", {"contents": [user("hi")], "tools": tools})
    for answer in (plain, called):
        assert answer.status_code == 200
        types.GenerateContentResponse.model_validate(answer.json())
    part = types.GenerateContentResponse.model_validate(called.json()).candidates[0].content.parts[0]
    assert part.function_call.args == {"city": "Paris"}
    assert part.thought_signature


def test_gemini_stream_with_the_sdk(fake_gemini: FakeGemini) -> None:
    chunks = list(gemini_client(fake_gemini).models.generate_content_stream(model="gemini-2.5-flash", contents="one two three"))
    assert "".join(c.text or "" for c in chunks) == "echo: one two three"
    assert len(chunks) == 4
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == 4
    assert fake_gemini.calls(":streamGenerateContent")[0].query == "alt=sse"


def test_gemini_stream_tool_call_then_finish_in_its_own_event(fake_gemini: FakeGemini) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER)])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    chunks = list(
        gemini_client(fake_gemini).models.generate_content_stream(model="gemini-2.5-flash", contents="weather?", config=config)
    )
    assert chunks[0].function_calls[0].name == "get_weather"
    assert chunks[0].candidates[0].finish_reason is None
    assert chunks[1].candidates[0].finish_reason == types.FinishReason.STOP
    assert not chunks[1].function_calls


def test_gemini_tools_with_the_sdk(fake_gemini: FakeGemini) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER)])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
    )
    result = gemini_client(fake_gemini).models.generate_content(model="gemini-2.5-flash", contents="weather?", config=config)
    assert result.function_calls[0].name == "get_weather"
    assert result.function_calls[0].args == {"city": "Paris"}


def test_gemini_generation_config_limits_and_json(fake_gemini: FakeGemini) -> None:
    client = gemini_client(fake_gemini)
    cut = client.models.generate_content(
        model="gemini-2.5-flash", contents="a b c d e", config=types.GenerateContentConfig(max_output_tokens=3)
    )
    assert cut.text == "echo: a b"
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    stopped = client.models.generate_content(
        model="gemini-2.5-flash", contents="a b STOP c", config=types.GenerateContentConfig(stop_sequences=["STOP"])
    )
    assert stopped.text == "echo: a b "
    as_json = client.models.generate_content(
        model="gemini-2.5-flash", contents="hi", config=types.GenerateContentConfig(response_mime_type="application/json")
    )
    assert orjson.loads(as_json.text) == {"echo": "hi"}
    two = client.models.generate_content(
        model="gemini-2.5-flash", contents="hi", config=types.GenerateContentConfig(candidate_count=2)
    )
    assert [c.index for c in two.candidates] == [0, 1]


def test_gemini_image_parts_are_echoed_as_their_mime(fake_gemini: FakeGemini) -> None:
    parts = [types.Part.from_text(text="what is this"), types.Part.from_bytes(data=b"\x89PNG fake", mime_type="image/png")]
    result = gemini_client(fake_gemini).models.generate_content(model="gemini-2.5-flash", contents=parts)
    assert result.text == "echo: what is this [image/png]"


def test_gemini_embeddings_and_model_list_with_the_sdk(fake_gemini: FakeGemini) -> None:
    client = gemini_client(fake_gemini)
    embedded = client.models.embed_content(model="text-embedding-004", contents=["a", "bb"])
    assert [e.values for e in embedded.embeddings] == [[1.0, 0.5, -0.25], [2.0, 0.5, -0.25]]
    names = [m.name for m in client.models.list()]
    assert names == [f"models/{m}" for m in fake_gemini.models]


def test_gemini_model_list_pages(fake_gemini: FakeGemini) -> None:
    first = httpx.get(f"{fake_gemini.url}/v1beta/models?pageSize=4", headers={"x-goog-api-key": "k"}).json()
    second = httpx.get(
        f"{fake_gemini.url}/v1beta/models?pageSize=4&pageToken={first['nextPageToken']}", headers={"x-goog-api-key": "k"}
    ).json()
    assert len(first["models"]) == 4 and len(second["models"]) == 2 and "nextPageToken" not in second


def test_gemini_errors_in_gemini_shape(fake_gemini: FakeGemini) -> None:
    with pytest.raises(genai_errors.ClientError) as bad_key:
        gemini_client(fake_gemini, INVALID_KEY).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert bad_key.value.code == 400 and bad_key.value.status == "INVALID_ARGUMENT"
    with pytest.raises(genai_errors.ClientError) as missing:
        gemini_client(fake_gemini).models.generate_content(model="gemini-9", contents="hi")
    assert missing.value.code == 404 and "models/gemini-9 is not found" in missing.value.message
    no_key = httpx.post(f"{fake_gemini.url}/v1beta/models/gemini-2.5-flash:generateContent", json={"contents": [user("x")]})
    assert no_key.status_code == 403 and no_key.json()["error"]["status"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"contents": [user("x")], "generationConfigs": {}}, 'Unknown name "generationConfigs"'),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "@@"}}]}]}, "Base64"),
        ({"contents": [user("x")], "generationConfig": {"maxTokens": 3}}, 'Unknown name "maxTokens"'),
    ],
)
def test_gemini_refuses_what_the_real_api_refuses(fake_gemini: FakeGemini, payload: dict, message: str) -> None:
    answer = gemini_post(fake_gemini, "models/gemini-2.5-flash:generateContent", payload)
    assert answer.status_code == 400
    assert message in answer.json()["error"]["message"]


def test_gemini_3_wants_signed_function_calls(fake_gemini: FakeGemini) -> None:
    history = [
        user("weather?"),
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 1}}}]},
    ]
    unsigned = gemini_post(fake_gemini, "models/gemini-3-pro-preview:generateContent", {"contents": history})
    assert unsigned.status_code == 400 and "thought_signature" in unsigned.json()["error"]["message"]
    history[1]["parts"][0]["thoughtSignature"] = "c2ln"
    signed = gemini_post(fake_gemini, "models/gemini-3-pro-preview:generateContent", {"contents": history})
    assert signed.status_code == 200
    assert signed.json()["candidates"][0]["content"]["parts"][0]["text"] == 'echo: {"t":1}'


def test_gemini_stream_without_sse_is_a_json_array(fake_gemini: FakeGemini) -> None:
    answer = gemini_post(fake_gemini, "models/gemini-2.5-flash:streamGenerateContent", {"contents": [user("a b")]})
    events = answer.json()
    assert isinstance(events, list) and len(events) == 3
    for event in events:
        types.GenerateContentResponse.model_validate(event)


def test_gemini_scripted_payload_helpers_validate(fake_gemini: FakeGemini) -> None:
    payload = response(
        [candidate([{"text": "x", "thought": True}, {"text": "y"}])],
        usage_metadata(3, 1, thoughts=2, cached=1),
        promptFeedback={"blockReason": "SAFETY"},
    )
    types.GenerateContentResponse.model_validate(payload)
    fake_gemini.script(Reply(status=429, json=error_body(429, "Resource has been exhausted")))
    with pytest.raises(genai_errors.ClientError) as limited:
        gemini_client(fake_gemini).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"


# -- Ollama -------------------------------------------------------------------------------------


async def test_ollama_chat_echoes_with_usage(fake_ollama: FakeOllama) -> None:
    answer = await ollama.AsyncClient(host=fake_ollama.url).chat(
        model="llama3.1", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.message.content == "echo: hello there"
    assert answer.done and answer.done_reason == "stop"
    assert answer.eval_count == 3 and answer.prompt_eval_count == 2
    assert fake_ollama.calls("/api/chat")[0].json["stream"] is False


async def test_ollama_chat_stream(fake_ollama: FakeOllama) -> None:
    parts = [
        part
        async for part in await ollama.AsyncClient(host=fake_ollama.url).chat(
            model="llama3.1", messages=[{"role": "user", "content": "one two"}], stream=True
        )
    ]
    assert "".join(p.message.content for p in parts) == "echo: one two"
    assert [p.done for p in parts] == [False, False, False, True]
    assert parts[-1].eval_count == 3


async def test_ollama_tool_calls_images_and_thinking(fake_ollama: FakeOllama) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    tool = {"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": WEATHER}}
    called = await client.chat(model="llama3.1", messages=[{"role": "user", "content": "weather?"}], tools=[tool])
    assert called.message.tool_calls[0].function.name == "get_weather"
    assert called.message.tool_calls[0].function.arguments == {"city": "Paris"}
    seen = await client.chat(model="llava", messages=[{"role": "user", "content": "what", "images": [PNG]}])
    assert seen.message.content == "echo: what [image]"
    thought = await client.chat(model="qwen3", messages=[{"role": "user", "content": "x"}], think=True)
    assert thought.message.thinking == "Thinking about it." and thought.message.content == "echo: x"


async def test_ollama_options_limit_stop_and_format(fake_ollama: FakeOllama) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    cut = await client.chat(model="llama3.1", messages=[{"role": "user", "content": "a b c d"}], options={"num_predict": 2})
    assert cut.message.content == "echo: a" and cut.done_reason == "length"
    stopped = await client.chat(model="llama3.1", messages=[{"role": "user", "content": "a END b"}], options={"stop": ["END"]})
    assert stopped.message.content == "echo: a "
    as_json = await client.chat(model="llama3.1", messages=[{"role": "user", "content": "hi"}], format="json")
    assert orjson.loads(as_json.message.content) == {"echo": "hi"}


async def test_ollama_embed_and_list(fake_ollama: FakeOllama) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    embedded = await client.embed(model="nomic-embed-text", input=["a", "bb"])
    assert embedded.embeddings == [[1.0, 0.5, -0.25], [2.0, 0.5, -0.25]]
    listed = await client.list()
    assert [m.model for m in listed.models] == fake_ollama.models


async def test_ollama_errors_in_ollama_shape(fake_ollama: FakeOllama) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="llama9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and 'model "llama9" not found' in missing.value.error
    with pytest.raises(ollama.ResponseError) as no_think:
        await client.chat(model="llama3.1", messages=[{"role": "user", "content": "x"}], think=True)
    assert no_think.value.status_code == 400
    bad_args = httpx.post(
        f"{fake_ollama.url}/api/chat",
        json={
            "model": "llama3.1",
            "stream": False,
            "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
        },
    )
    assert bad_args.status_code == 400 and "cannot unmarshal string" in bad_args.json()["error"]


async def test_ollama_error_line_mid_stream(fake_ollama: FakeOllama) -> None:
    fake_ollama.script(fake_ollama.reply_stream([message_line("llama3.1", "partial"), {"error": "out of memory"}]))
    stream = await ollama.AsyncClient(host=fake_ollama.url).chat(
        model="llama3.1", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(ollama.ResponseError) as failed:
        async for _ in stream:
            pass
    assert failed.value.error == "out of memory"


def test_ollama_raw_payloads_validate_against_the_sdk_types(fake_ollama: FakeOllama) -> None:
    answer = httpx.post(
        f"{fake_ollama.url}/api/chat",
        json={"model": "llama3.1", "stream": False, "messages": [{"role": "user", "content": "x"}]},
    ).json()
    ollama.ChatResponse.model_validate(answer)
    ollama.ChatResponse.model_validate(done_line("llama3.1", tool_calls=[{"function": {"name": "f", "arguments": {}}}]))
    lines = httpx.post(
        f"{fake_ollama.url}/api/chat", json={"model": "llama3.1", "messages": [{"role": "user", "content": "x"}]}
    ).text.splitlines()
    assert len(lines) == 3
    for line in lines:
        ollama.ChatResponse.model_validate_json(line)
