"""The pure translations between OpenAI's chat format and Gemini's and Ollama's, without a server.

Every answer is also validated with the ``openai`` package's own types: what
they accept is what the SDK will hand to its users.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator

import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.completions import Chunk, StreamAssembler
from proxy.errors import InvalidRequest, UpstreamProtocolError
from proxy.providers import gemini, ollama
from proxy.providers import translate as t
from proxy.providers.base import parse_json, translated
from tests.fakes.gemini import candidate, response, usage_metadata
from tests.fakes.ollama import done_line, message_line

PNG = base64.b64encode(b"\x89PNG fake").decode()
DATA_URL = f"data:image/png;base64,{PNG}"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER, "strict": True}}]
MODEL = "gemini-2.5-flash"


def chat(*messages: dict, **params: object) -> dict:
    return {"model": "client-model", "messages": list(messages), **params}


def user(content: object) -> dict:
    return {"role": "user", "content": content}


def assistant_call(call_id: str = "call_1", arguments: str = '{"city":"Paris"}', content: str | None = None) -> dict:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {"role": "assistant", "content": content, "tool_calls": [call]}


def tool_result(content: str, call_id: str = "call_1") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def assemble(chunks: list[dict]) -> dict:
    assembler = StreamAssembler()
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assembler.add(chunk)
    return assembler.completion().data


# -- shared helpers -------------------------------------------------------------------------


def test_ids_look_like_openai_ids() -> None:
    assert t.completion_id().startswith("chatcmpl-") and len(t.completion_id()) == 38
    assert t.completion_id("abc") == "chatcmpl-abc"
    assert t.tool_call_id().startswith("call_") and len(t.tool_call_id()) == 29
    assert t.tool_call_id() != t.tool_call_id()


def test_data_urls() -> None:
    assert t.parse_data_url(DATA_URL, "p") == t.DataURL("image/png", PNG)
    assert t.parse_data_url("data:text/plain,hi%20there", "p") == t.DataURL("text/plain", base64.b64encode(b"hi there").decode())
    assert t.parse_data_url("https://example.com/cat.png", "p") is None
    for bad in ("data:image/png;base64", "data:image/png;base64,@@@"):
        with pytest.raises(InvalidRequest) as error:
            t.parse_data_url(bad, "messages[0].content[1]")
        assert error.value.param == "messages[0].content[1]"


@pytest.mark.parametrize("provider", [gemini, ollama])
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("logit_bias", {"50256": -100}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("web_search_options", {"search_context_size": "low"}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("verbosity", "low"),
        ("some_unknown_parameter", 1),
    ],
)
def test_parameters_that_would_change_the_answer_are_rejected_by_name(provider, param: str, value: object) -> None:
    body = chat(user("hi"), **{param: value})
    with pytest.raises(InvalidRequest) as error:
        _request(provider, body)
    assert error.value.param == param and error.value.status == 400
    assert f"'{param}'" in error.value.message


@pytest.mark.parametrize("provider", [gemini, ollama])
def test_parameters_that_cannot_change_the_answer_are_dropped(provider) -> None:
    body = chat(
        user("hi"),
        user="u1",
        store=True,
        metadata={"k": "v"},
        parallel_tool_calls=False,
        service_tier="auto",
        prompt_cache_key="k",
        safety_identifier="s",
        stream_options={"include_usage": True},
        logprobs=None,
        logit_bias={},
        n=1,
        modalities=["text"],
    )
    wire = _request(provider, body)
    text = orjson.dumps(wire).decode()
    for name in ("u1", "metadata", "parallel", "service_tier", "prompt_cache", "safety", "include_usage"):
        assert name not in text


def _request(provider, body: dict) -> dict:
    return provider.chat_request(body, MODEL) if provider is gemini else provider.chat_request(body, "llama3.1", stream=False)


# -- Gemini requests ------------------------------------------------------------------------


def test_gemini_roles_system_and_merged_turns() -> None:
    wire = gemini.chat_request(
        chat(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
            user("hi"),
            user("again"),
            {"role": "assistant", "content": "hello"},
            user("bye"),
        ),
        MODEL,
    )
    assert wire["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]}
    assert wire["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]},
        {"role": "model", "parts": [{"text": "hello"}]},
        {"role": "user", "parts": [{"text": "bye"}]},
    ]
    assert "generationConfig" not in wire and "tools" not in wire


def test_gemini_sampling_parameters_go_to_generation_config() -> None:
    wire = gemini.chat_request(
        chat(
            user("hi"),
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            max_tokens=100,
            max_completion_tokens=50,
            stop="END",
            n=2,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
        ),
        MODEL,
    )
    assert wire["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 40,
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
    }
    assert gemini.chat_request(chat(user("x"), max_tokens=9, stop=["a", "b"]), MODEL)["generationConfig"] == {
        "maxOutputTokens": 9,
        "stopSequences": ["a", "b"],
    }


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}},
            {"responseMimeType": "application/json", "responseJsonSchema": WEATHER},
        ),
    ],
)
def test_gemini_response_format(response_format: dict, expected: dict | None) -> None:
    wire = gemini.chat_request(chat(user("x"), response_format=response_format), MODEL)
    assert wire.get("generationConfig") == expected


def test_response_format_of_an_unknown_type_is_rejected() -> None:
    for provider in (gemini, ollama):
        with pytest.raises(InvalidRequest) as error:
            _request(provider, chat(user("x"), response_format={"type": "yaml"}))
        assert error.value.param == "response_format"


def test_gemini_images_audio_and_files() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo"}},
        {"type": "input_audio", "input_audio": {"data": PNG, "format": "wav"}},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PNG}", "filename": "a.pdf"}},
    ]
    parts = gemini.chat_request(chat(user(content)), MODEL)["contents"][0]["parts"]
    assert parts == [
        {"text": "look"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}},
        {"inlineData": {"mimeType": "audio/wav", "data": PNG}},
        {"inlineData": {"mimeType": "application/pdf", "data": PNG}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}, "messages[0].content[0]"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}, "messages[0].content[0]"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0]"),
        ({"type": "video", "video": {}}, "messages[0].content[0]"),
    ],
)
def test_gemini_unusable_parts_are_rejected(part: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        gemini.chat_request(chat(user([part])), MODEL)
    assert error.value.param == param


def test_gemini_tools_and_tool_choice() -> None:
    wire = gemini.chat_request(chat(user("weather?"), tools=TOOLS), MODEL)
    assert wire["tools"] == [
        {"functionDeclarations": [{"name": "get_weather", "description": "Weather", "parametersJsonSchema": WEATHER}]}
    ]
    assert "toolConfig" not in wire

    def config(choice: object) -> dict:
        return gemini.chat_request(chat(user("x"), tools=TOOLS, tool_choice=choice), MODEL)["toolConfig"]["functionCallingConfig"]

    assert config("auto") == {"mode": "AUTO"}
    assert config("none") == {"mode": "NONE"}
    assert config("required") == {"mode": "ANY"}
    assert config({"type": "function", "function": {"name": "get_weather"}}) == {
        "mode": "ANY",
        "allowedFunctionNames": ["get_weather"],
    }


def test_allowed_tools_narrow_the_declarations() -> None:
    tools = TOOLS + [{"type": "function", "function": {"name": "get_time"}}]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]}}
    wire = gemini.chat_request(chat(user("x"), tools=tools, tool_choice=choice), MODEL)
    assert wire["tools"] == [{"functionDeclarations": [{"name": "get_time"}]}]
    assert wire["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert [t["function"]["name"] for t in ollama.chat_request(chat(user("x"), tools=tools, tool_choice=choice), "m", False)["tools"]] == ["get_time"]


def test_tools_other_than_functions_are_rejected() -> None:
    for provider in (gemini, ollama):
        with pytest.raises(InvalidRequest) as error:
            _request(provider, chat(user("x"), tools=[{"type": "custom", "custom": {"name": "c"}}]))
        assert error.value.param == "tools[0]"


def test_gemini_tool_calls_and_results_in_the_history() -> None:
    wire = gemini.chat_request(
        chat(
            user("weather?"),
            assistant_call("call_1", content="Let me look."),
            tool_result('{"temp": 21}'),
            assistant_call("call_2"),
            tool_result("sunny", "call_2"),
            tools=TOOLS,
        ),
        MODEL,
    )
    assert wire["contents"][1:] == [
        {"role": "model", "parts": [{"text": "Let me look."}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}]},
    ]


def test_parallel_tool_results_share_one_turn() -> None:
    calls = assistant_call("call_a")
    calls["tool_calls"].append({"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}})
    wire = gemini.chat_request(chat(user("x"), calls, tool_result("1", "call_a"), tool_result("[2]", "call_b")), MODEL)
    assert wire["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": 1}}},
            {"functionResponse": {"name": "get_time", "response": {"output": [2]}}},
        ],
    }


def test_bad_tool_history_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as orphan:
        gemini.chat_request(chat(user("x"), tool_result("1", "call_unknown")), MODEL)
    assert orphan.value.param == "messages[1].tool_call_id"
    for provider in (gemini, ollama):
        with pytest.raises(InvalidRequest) as bad_args:
            _request(provider, chat(user("x"), assistant_call(arguments="[1, 2]")))
        assert bad_args.value.param == "messages[1].tool_calls[0].function.arguments"


def test_gemini_3_thought_signatures_travel_in_the_tool_call_id() -> None:
    answer = gemini.chat_response(
        response([candidate([{"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": "U0lH"}])]), "m"
    )
    call_id = answer["choices"][0]["message"]["tool_calls"][0]["id"]
    assert call_id.startswith("call_") and call_id.endswith("__thought__U0lH")
    history = chat(user("x"), assistant_call(call_id), tool_result("1", call_id))
    parts = gemini.chat_request(history, "gemini-3-pro-preview")["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == "U0lH"


def test_gemini_3_unsigned_calls_get_the_bypass_signature_and_older_models_none() -> None:
    calls = assistant_call("call_a")
    calls["tool_calls"].append({"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}})
    history = chat(user("x"), calls, tool_result("1", "call_a"), tool_result("2", "call_b"))
    parts = gemini.chat_request(history, "gemini-3-pro-preview")["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [gemini.BYPASS_SIGNATURE, None]
    older = gemini.chat_request(history, MODEL)["contents"][1]["parts"]
    assert all("thoughtSignature" not in p for p in older)


def test_gemini_reasoning_effort_and_logprobs() -> None:
    wire = gemini.chat_request(chat(user("x"), reasoning_effort="low", logprobs=True, top_logprobs=3), MODEL)
    assert wire["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 1024}, "responseLogprobs": True, "logprobs": 3}
    assert gemini.chat_request(chat(user("x"), reasoning_effort="none"), MODEL)["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": 0}
    }
    with pytest.raises(InvalidRequest) as error:
        gemini.chat_request(chat(user("x"), reasoning_effort="max"), MODEL)
    assert error.value.param == "reasoning_effort"


def test_gemini_rejects_unknown_roles() -> None:
    with pytest.raises(InvalidRequest) as error:
        gemini.chat_request(chat(user("x"), {"role": "function", "name": "f", "content": "1"}), MODEL)
    assert error.value.param == "messages[1].role"


# -- Gemini answers -------------------------------------------------------------------------


def test_gemini_text_answer() -> None:
    data = response([candidate([{"text": "Hello"}, {"text": " world"}])], usage_metadata(4, 2), responseId="abc")
    answer = gemini.chat_response(data, "my-model")
    ChatCompletion.model_validate(answer)
    assert answer["id"] == "chatcmpl-abc" and answer["object"] == "chat.completion" and answer["model"] == "my-model"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ],
)
def test_gemini_finish_reasons(reason: str, expected: str) -> None:
    answer = gemini.chat_response(response([candidate([{"text": "x"}], reason)]), "m")
    ChatCompletion.model_validate(answer)
    assert answer["choices"][0]["finish_reason"] == expected


def test_gemini_function_calls_become_tool_calls() -> None:
    parts = [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]
    answer = gemini.chat_response(response([candidate(parts, "STOP")]), "m")
    ChatCompletion.model_validate(answer)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [
        {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"name": "get_time", "arguments": "{}"},
    ]
    assert calls[0]["id"] != calls[1]["id"] and all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)


def test_gemini_usage_details_thoughts_and_cache() -> None:
    usage = gemini.usage({**usage_metadata(10, 5, thoughts=20, cached=4), "toolUsePromptTokenCount": 2})
    assert usage == {
        "prompt_tokens": 12,
        "completion_tokens": 25,
        "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }


def test_gemini_thought_parts_are_not_content() -> None:
    answer = gemini.chat_response(response([candidate([{"text": "hmm", "thought": True}, {"text": "42"}])]), "m")
    assert answer["choices"][0]["message"]["content"] == "42"


def test_gemini_empty_answer_is_empty_text() -> None:
    answer = gemini.chat_response(response([candidate([], "MAX_TOKENS")]), "m")
    assert answer["choices"][0]["message"]["content"] == "" and answer["choices"][0]["finish_reason"] == "length"


def test_gemini_candidates_become_choices() -> None:
    data = response([candidate([{"text": "b"}], index=1), candidate([{"text": "a"}], index=0)])
    answer = gemini.chat_response(data, "m")
    assert [(c["index"], c["message"]["content"]) for c in answer["choices"]] == [(0, "a"), (1, "b")]


def test_gemini_blocked_prompt_is_a_content_filter_answer() -> None:
    answer = gemini.chat_response({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage_metadata(3)}, "m")
    ChatCompletion.model_validate(answer)
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert answer["usage"]["prompt_tokens"] == 3


def test_gemini_logprobs() -> None:
    result = {
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}],
        "topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "Yo", "logProbability": -2.5}]}],
    }
    answer = gemini.chat_response(response([candidate([{"text": "Hi"}], logprobsResult=result)]), "m")
    ChatCompletion.model_validate(answer)
    entry = answer["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == "Hi" and entry["logprob"] == -0.1 and entry["bytes"] == [72, 105]
    assert [top["token"] for top in entry["top_logprobs"]] == ["Hi", "Yo"]


# -- Gemini streams -------------------------------------------------------------------------


def test_gemini_stream_text_chunks_share_one_id_and_end_with_usage() -> None:
    stream = gemini.GeminiStream("my-model")
    events = [
        response([candidate([{"text": "Hel"}], None)], usage_metadata(4), responseId="r1"),
        response([candidate([{"text": "lo"}], "STOP")], usage_metadata(4, 2), responseId="r1"),
    ]
    chunks = [chunk for event in events for chunk in stream.feed(event)] + stream.close()
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] == "chatcmpl-r1"
    assert {c["model"] for c in chunks} == {"my-model"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert chunks[1]["choices"][0] == {"index": 0, "delta": {"content": "lo"}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6
    assembled = assemble(chunks)
    assert assembled["choices"][0]["message"]["content"] == "Hello"
    assert assembled["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_gemini_stream_finish_after_tool_call_is_tool_calls() -> None:
    """Newer Gemini models send STOP in an event of its own, after the call: still tool_calls."""
    stream = gemini.GeminiStream("m")
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    events = [
        response([candidate([call], None)], usage_metadata(4)),
        response([candidate([{"text": ""}], "STOP")], usage_metadata(4, 3)),
    ]
    chunks = [chunk for event in events for chunk in stream.feed(event)] + stream.close()
    delta = chunks[0]["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["content"] is None
    assert delta["tool_calls"][0]["index"] == 0 and delta["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assembled = assemble(chunks)
    assert assembled["choices"][0]["finish_reason"] == "tool_calls"
    assert assembled["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_gemini_stream_tool_call_indexes_count_up_across_events() -> None:
    stream = gemini.GeminiStream("m")
    first = stream.feed(response([candidate([{"functionCall": {"name": "a", "args": {}}}], None)]))
    second = stream.feed(response([candidate([{"functionCall": {"name": "b", "args": {}}}], "STOP")]))
    assert first[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert second[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert second[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_gemini_stream_equals_the_non_streamed_answer() -> None:
    data = response([candidate([{"text": "one two"}], "MAX_TOKENS")], usage_metadata(3, 2, thoughts=1))
    stream = gemini.GeminiStream("m")
    streamed = assemble(stream.feed(data) + stream.close())
    whole = gemini.chat_response(data, "m")
    assert streamed["choices"][0]["message"]["content"] == whole["choices"][0]["message"]["content"]
    assert streamed["choices"][0]["finish_reason"] == "length"
    assert streamed["usage"] == whole["usage"]


def test_gemini_stream_with_two_candidates() -> None:
    stream = gemini.GeminiStream("m")
    chunks = stream.feed(response([candidate([{"text": "a"}], "STOP", 0), candidate([{"text": "b"}], "STOP", 1)])) + stream.close()
    assembled = assemble(chunks)
    assert [c["message"]["content"] for c in assembled["choices"]] == ["a", "b"]


def test_gemini_stream_blocked_prompt() -> None:
    stream = gemini.GeminiStream("m")
    chunks = stream.feed({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage_metadata(3)}) + stream.close()
    assert assemble(chunks)["choices"][0]["finish_reason"] == "content_filter"


def test_gemini_stream_cut_before_finish_or_failing_raises() -> None:
    stream = gemini.GeminiStream("m")
    stream.feed(response([candidate([{"text": "Hel"}], None)]))
    with pytest.raises(UpstreamProtocolError):
        stream.close()
    with pytest.raises(UpstreamProtocolError):
        gemini.GeminiStream("m").close()
    with pytest.raises(UpstreamProtocolError, match="quota exceeded"):
        gemini.GeminiStream("m").feed({"error": {"code": 429, "message": "quota exceeded", "status": "RESOURCE_EXHAUSTED"}})


def test_gemini_stream_without_usage_has_no_usage_chunk() -> None:
    stream = gemini.GeminiStream("m")
    chunks = stream.feed({"candidates": [candidate([{"text": "x"}])]}) + stream.close()
    assert all(c["choices"] for c in chunks)


# -- Gemini embeddings and models -----------------------------------------------------------


def test_gemini_embeddings() -> None:
    wire = gemini.embed_request({"model": "e", "input": ["a", "b"], "dimensions": 2, "user": "u"}, "text-embedding-004")
    assert wire == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 2},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 2},
        ]
    }
    answer = gemini.embed_response({"embeddings": [{"values": [0.5, 1.0]}, {"values": [2.0, 0.0]}]}, {"input": ["a", "b"]}, "e")
    CreateEmbeddingResponse.model_validate(answer)
    assert answer["data"][1] == {"object": "embedding", "index": 1, "embedding": [2.0, 0.0]}
    assert answer["model"] == "e" and answer["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


def test_embeddings_in_base64() -> None:
    answer = gemini.embed_response({"embeddings": [{"values": [0.5, -1.0]}]}, {"encoding_format": "base64"}, "e")
    assert struct.unpack("<2f", base64.b64decode(answer["data"][0]["embedding"])) == (0.5, -1.0)


@pytest.mark.parametrize("body", [{"input": [1, 2, 3]}, {"input": [[1, 2]]}, {"input": []}, {"input": "x", "encoding_format": "int8"}])
def test_embedding_inputs_neither_upstream_takes_are_rejected(body: dict) -> None:
    for request in (lambda: gemini.embed_request(body, "m"), lambda: ollama.embed_request(body, "m")):
        with pytest.raises(InvalidRequest) as error:
            request()
        assert error.value.param in ("input", "encoding_format")


def test_gemini_model_ids_and_paths() -> None:
    assert gemini.model_ids({"models": [{"name": "models/gemini-2.5-flash"}, {"name": "tunedModels/mine"}]}) == [
        "gemini-2.5-flash",
        "tunedModels/mine",
    ]
    assert gemini.model_path("gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert gemini.model_path("models/gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert gemini.model_path("tunedModels/mine") == "tunedModels/mine"
    assert gemini.model_path("a b") == "models/a%20b"
    for unsafe in ("a?b", "a#b", "models/../files", "x\nb", "x\x7fb"):
        with pytest.raises(InvalidRequest):
            gemini.model_path(unsafe)


# -- Ollama requests ------------------------------------------------------------------------


def test_ollama_messages_options_and_passthrough() -> None:
    wire = ollama.chat_request(
        chat(
            {"role": "developer", "content": "Be brief."},
            user([{"type": "text", "text": "what is"}, {"type": "text", "text": "this"}, {"type": "image_url", "image_url": {"url": DATA_URL}}]),
            temperature=0.1,
            top_p=0.8,
            max_tokens=64,
            stop=["END"],
            seed=3,
            presence_penalty=0.2,
            frequency_penalty=0.3,
            keep_alive="10m",
            options={"num_ctx": 8192, "temperature": 0.9},
        ),
        "llama3.1",
        stream=True,
    )
    assert wire == {
        "model": "llama3.1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "what is\nthis", "images": [PNG]},
        ],
        "stream": True,
        "options": {
            "num_ctx": 8192,
            "temperature": 0.1,
            "top_p": 0.8,
            "seed": 3,
            "presence_penalty": 0.2,
            "frequency_penalty": 0.3,
            "num_predict": 64,
            "stop": ["END"],
        },
        "keep_alive": "10m",
    }


def test_ollama_stream_flag_is_always_explicit() -> None:
    assert ollama.chat_request(chat(user("x")), "m", stream=False)["stream"] is False


def test_ollama_rejects_what_it_cannot_do() -> None:
    cases = [
        (chat(user([{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}])), "messages[0].content[0]"),
        (chat(user([{"type": "input_audio", "input_audio": {"data": PNG, "format": "wav"}}])), "messages[0].content[0]"),
        (chat(user("x"), n=2), "n"),
        (chat(user("x"), tools=TOOLS, tool_choice="required"), "tool_choice"),
        (chat(user("x"), tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}), "tool_choice"),
        (chat(user("x"), options="fast"), "options"),
        (chat(user("x"), reasoning_effort="max"), "reasoning_effort"),
    ]
    for body, param in cases:
        with pytest.raises(InvalidRequest) as error:
            ollama.chat_request(body, "m", stream=False)
        assert error.value.param == param


def test_ollama_tools_and_tool_history() -> None:
    wire = ollama.chat_request(
        chat(user("weather?"), assistant_call("call_1"), tool_result('{"temp": 21}'), tools=TOOLS, tool_choice="auto"), "m", False
    )
    assert wire["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "description": "Weather"}}
    ]
    assert wire["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
    ]
    assert "tools" not in ollama.chat_request(chat(user("x"), tools=TOOLS, tool_choice="none"), "m", False)


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}, WEATHER),
        ({"type": "json_schema", "json_schema": {"name": "w"}}, "json"),
    ],
)
def test_ollama_format(response_format: dict, expected: object) -> None:
    assert ollama.chat_request(chat(user("x"), response_format=response_format), "m", False)["format"] == expected


def test_ollama_reasoning_effort_and_logprobs() -> None:
    wire = ollama.chat_request(chat(user("x"), reasoning_effort="high", logprobs=True, top_logprobs=2), "m", False)
    assert (wire["think"], wire["logprobs"], wire["top_logprobs"]) == ("high", True, 2)
    assert ollama.chat_request(chat(user("x"), reasoning_effort="none"), "m", False)["think"] is False


# -- Ollama answers -------------------------------------------------------------------------


def test_ollama_text_answer() -> None:
    answer = ollama.chat_response(done_line("llama3.1", 5, 2, content="Hi there", thinking="hmm"), "my-model")
    ChatCompletion.model_validate(answer)
    assert answer["id"].startswith("chatcmpl-") and answer["model"] == "my-model"
    assert answer["choices"][0]["message"]["content"] == "Hi there"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


@pytest.mark.parametrize(("done_reason", "expected"), [("stop", "stop"), ("length", "length"), ("load", "stop"), (None, "stop")])
def test_ollama_finish_reasons(done_reason: str | None, expected: str) -> None:
    assert ollama.chat_response(done_line("m", reason=done_reason), "m")["choices"][0]["finish_reason"] == expected


def test_ollama_tool_call_arguments_become_json_strings_with_ids() -> None:
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}, {"function": {"name": "f", "arguments": {}}}]
    answer = ollama.chat_response(done_line("m", tool_calls=calls), "m")
    ChatCompletion.model_validate(answer)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    made = choice["message"]["tool_calls"]
    assert [c["function"]["arguments"] for c in made] == ['{"city":"Paris"}', "{}"]
    assert made[0]["id"].startswith("call_") and made[0]["id"] != made[1]["id"]


def test_ollama_usage_when_the_prompt_was_cached() -> None:
    line = done_line("m", 0, 4)
    del line["prompt_eval_count"]
    assert ollama.usage(line) == {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}
    assert ollama.usage({"done": True}) is None


def test_ollama_logprobs() -> None:
    line = {**done_line("m", content="Hi"), "logprobs": [{"token": "Hi", "logprob": -0.2, "top_logprobs": [{"token": "Yo", "logprob": -3.0}]}]}
    answer = ollama.chat_response(line, "m")
    ChatCompletion.model_validate(answer)
    assert answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["token"] == "Yo"


# -- Ollama streams -------------------------------------------------------------------------


def test_ollama_stream() -> None:
    stream = ollama.OllamaStream("my-model")
    lines = [message_line("m", thinking="hmm"), message_line("m", "Hel"), message_line("m", "lo"), done_line("m", 3, 2)]
    chunks = [chunk for line in lines for chunk in stream.feed(line)] + stream.close()
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1] == {**chunks[-1], "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    assembled = assemble(chunks)
    assert assembled["choices"][0]["message"]["content"] == "Hello" and assembled["model"] == "my-model"


def test_ollama_stream_tool_calls_finish_with_tool_calls() -> None:
    stream = ollama.OllamaStream("m")
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    chunks = stream.feed(message_line("m", tool_calls=[call])) + stream.feed(done_line("m", reason="stop")) + stream.close()
    assembled = assemble(chunks)
    assert assembled["choices"][0]["finish_reason"] == "tool_calls"
    assert assembled["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}


def test_ollama_stream_errors() -> None:
    stream = ollama.OllamaStream("m")
    stream.feed(message_line("m", "partial"))
    with pytest.raises(UpstreamProtocolError, match="out of memory"):
        stream.feed({"error": "out of memory"})
    with pytest.raises(UpstreamProtocolError):
        stream.close()


# -- Ollama embeddings and models -----------------------------------------------------------


def test_ollama_embeddings_and_models() -> None:
    wire = ollama.embed_request({"model": "e", "input": "hi", "dimensions": 2, "keep_alive": 0}, "nomic-embed-text")
    assert wire == {"model": "nomic-embed-text", "input": ["hi"], "dimensions": 2, "keep_alive": 0}
    answer = ollama.embed_response({"embeddings": [[0.1, 0.2]], "prompt_eval_count": 2}, {}, "e")
    CreateEmbeddingResponse.model_validate(answer)
    assert answer["data"][0]["embedding"] == [0.1, 0.2] and answer["usage"]["prompt_tokens"] == 2
    assert ollama.model_ids({"models": [{"name": "llama3.1:latest"}, {"model": "nameless"}]}) == ["llama3.1:latest"]


async def test_a_failing_event_lets_the_chunks_before_it_in_its_batch_through() -> None:
    """Events read together are translated together: an error in the middle of a
    batch must not swallow the chunks that came before it."""

    async def batches() -> AsyncIterator[list[bytes]]:
        yield [b'{"text": "a"}', b'{"text": "b"}', b"not json", b'{"text": "never"}']

    def translate(data: bytes) -> list[Chunk]:
        return [Chunk.from_data({"object": "chat.completion.chunk", "text": parse_json(data)["text"]})]

    received: list[list[str]] = []
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        async for chunks in translated(batches(), translate):
            received.append([chunk.data["text"] for chunk in chunks])
    assert received == [["a", "b"]]
