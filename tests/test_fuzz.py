"""Property-based fuzzing through the real server: whatever a client sends and whatever an
upstream answers, Sluice answers with a 4xx in OpenAI's shape, a success, or a 502/503/504
for a real upstream failure; never a 500 (CONTRACT §8).

One Sluice per provider type, on the fakes; each example is one HTTP request. Seeded
(``derandomize``) and bounded, so ``make test`` runs the same examples every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fakes import gemini as fake_gemini
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai as fake_openai
from tests.fakes.server import FakeServer, Reply
from tests.proxy_process import ProxyProcess

TYPES = ("openai", "gemini", "ollama")
MODELS = {"openai": "gpt-4o-mini", "gemini": "gemini-2.5-flash", "ollama": "llama3.1"}
EMBEDDING_MODELS = {"openai": "text-embedding-3-small", "gemini": "gemini-embedding-001", "ollama": "nomic-embed-text"}
UPSTREAM_FAILURES = {502, 503, 504}
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- JSON of every shape -------------------------------------------------------------------------

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
any_json = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6
)


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes any JSON at all."""
    return st.one_of(plausible, plausible, any_json)


def rarely(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Plausible values, any JSON one time in ten: for the outer structure, so most examples get deep."""
    return st.sampled_from([False] * 9 + [True]).flatmap(lambda wild: any_json if wild else plausible)


# -- client bodies -------------------------------------------------------------------------------

PNG = "data:image/png;base64,iVBORw0KGgo="
part = st.fixed_dictionaries(
    {"type": either(st.sampled_from(["text", "image_url", "input_audio", "file", "refusal"]))},
    optional={
        "text": either(st.text(max_size=20)),
        "refusal": any_json,
        "image_url": either(st.fixed_dictionaries({"url": either(st.sampled_from([PNG, "http://x/y.png", "data:,x", "data:image/png;base64,!!"]))})),
        "input_audio": either(st.fixed_dictionaries({"data": st.text(max_size=8), "format": st.sampled_from(["wav", "mp3"])})),
        "file": either(st.fixed_dictionaries({}, optional={"file_data": either(st.just(PNG)), "file_id": any_json, "filename": any_json})),
    },
)
function_call = st.fixed_dictionaries(
    {},
    optional={
        "name": either(st.sampled_from(["get_weather", "f"])),
        "arguments": either(st.sampled_from(['{"city": "Oslo"}', "{", "[]", '"x"', ""])),
    },
)
tool_call = either(
    st.fixed_dictionaries(
        {"function": either(function_call)}, optional={"id": either(st.sampled_from(["call_1", "call_2"])), "type": either(st.just("function"))}
    )
)
message = rarely(
    st.fixed_dictionaries(
        {"role": rarely(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))},
        optional={
            "content": either(st.none() | st.text(max_size=30) | st.lists(either(part), max_size=3)),
            "tool_calls": either(st.lists(tool_call, max_size=2)),
            "tool_call_id": either(st.sampled_from(["call_1", "call_2"])),
            "name": any_json,
        },
    )
)
tool = either(
    st.fixed_dictionaries(
        {"type": either(st.just("function")), "function": either(st.fixed_dictionaries({"name": either(st.just("get_weather"))}, optional={"parameters": any_json, "description": any_json}))}
    )
)
CHAT_PARAMETERS = {
    "stream": either(st.booleans()),
    "stream_options": either(st.fixed_dictionaries({"include_usage": either(st.booleans())})),
    "temperature": either(st.floats(0, 2)),
    "top_p": either(st.floats(0, 1)),
    "top_k": either(st.integers(1, 50)),
    "max_tokens": either(st.integers(1, 100)),
    "max_completion_tokens": either(st.integers(1, 100)),
    "n": either(st.integers(1, 2)),
    "seed": either(st.integers(0, 100)),
    "stop": either(st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=2)),
    "tools": either(st.lists(tool, max_size=2)),
    "tool_choice": either(st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}])),
    "response_format": either(st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}])),
    "reasoning_effort": either(st.sampled_from(["low", "medium", "high", "none"])),
    "logprobs": either(st.booleans()),
    "top_logprobs": either(st.integers(0, 5)),
    "presence_penalty": either(st.floats(-2, 2)),
    "user": any_json,
    "logit_bias": any_json,
    "parallel_tool_calls": any_json,
    "keep_alive": any_json,
}


def model_for(kind: str, models: dict[str, str]) -> st.SearchStrategy[Any]:
    return rarely(st.sampled_from([models[kind], f"{kind}/{models[kind]}"]) | st.text(max_size=16).map(lambda m: f"{kind}/{m}"))


def chat_body(kind: str) -> st.SearchStrategy[Any]:
    return rarely(
        st.fixed_dictionaries(
            {"model": model_for(kind, MODELS), "messages": rarely(st.lists(message, min_size=1, max_size=4))}, optional=CHAT_PARAMETERS
        )
    )


def embeddings_body(kind: str) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"model": model_for(kind, EMBEDDING_MODELS), "input": rarely(st.text(max_size=20) | st.lists(either(st.text(max_size=10)), max_size=3))},
        optional={"dimensions": either(st.integers(1, 8)), "encoding_format": either(st.sampled_from(["float", "base64"])), "user": any_json},
    )


# -- upstream answers ----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with some fields dropped, nulled or replaced by JSON of another shape."""
    action = draw(st.sampled_from(["keep"] * 8 + ["null", "replace"]))
    if action == "null":
        return None
    if action == "replace":
        return draw(any_json)
    if isinstance(value, dict):
        return {k: draw(mutated(v)) for k, v in value.items() if draw(st.integers(0, 11))}
    if isinstance(value, list):
        return [draw(mutated(v)) for v in value]
    return value


def chat_answers(kind: str) -> tuple[Any, list[Any]]:
    """A realistic answer of each provider type, and its stream: the seeds for mutation."""
    model = MODELS[kind]
    if kind == "openai":
        call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        return fake_openai.completion(model, "hello", [call]), fake_openai.stream_chunks(model, "hello there")
    if kind == "gemini":
        parts = [{"text": "hello"}, {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"}]
        answer = fake_gemini.response([fake_gemini.candidate(parts)], fake_gemini.usage_metadata(5, 3, thoughts=1, cached=1))
        answer["candidates"][0]["logprobsResult"] = {"chosenCandidates": [{"token": "he", "logProbability": -0.1}], "topCandidates": [{"candidates": [{"token": "he", "logProbability": -0.1}]}]}
        simple = fake_gemini.response([fake_gemini.candidate([{"text": "hello there"}])], fake_gemini.usage_metadata(5, 3))
        return answer, fake_gemini.stream_events(simple) + [{"promptFeedback": {"blockReason": "SAFETY"}}]
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    logprobs = [{"token": "he", "logprob": -0.1, "top_logprobs": [{"token": "he", "logprob": -0.1}]}]
    answer = fake_ollama.done_line(model, content="hello", tool_calls=calls) | {"logprobs": logprobs}
    return answer, [fake_ollama.message_line(model, "hello"), fake_ollama.message_line(model, " there"), fake_ollama.done_line(model)]


def embeddings_answer(kind: str) -> Any:
    if kind == "openai":
        return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    if kind == "gemini":
        return {"embeddings": [{"values": [0.1, 0.2]}], "usageMetadata": {"promptTokenCount": 1}}
    return {"model": "m", "embeddings": [[0.1, 0.2]], "prompt_eval_count": 1}


BROKEN_BODIES = st.sampled_from([b"", b"<html><body><h1>502 Bad Gateway</h1></body></html>", b"null", b"[]", b'"text"', b"{", b"\xff\xfe"])


@st.composite
def upstream_reply(draw: st.DrawFn, kind: str) -> tuple[str, Reply]:
    """``(what to ask, the upstream's status-200 answer)``: a mutated answer or stream, cut JSON, HTML, nothing."""
    answer, events = chat_answers(kind)
    ask = draw(st.sampled_from(["chat", "stream", "embeddings"]))
    if ask == "stream":
        items = draw(st.lists(st.one_of(*[mutated(event) for event in events]), max_size=len(events) + 1)) if draw(st.booleans()) else [draw(mutated(e)) for e in events]
        frames: list[Any] = [orjson.dumps(item) for item in items]
        if draw(st.integers(0, 3)) == 0:
            frames.insert(draw(st.integers(0, len(frames))), draw(BROKEN_BODIES))
        return ask, Reply(chunks=frames)
    seed = answer if ask == "chat" else embeddings_answer(kind)
    shape = draw(st.sampled_from(["mutated", "mutated", "mutated", "cut", "broken"]))
    if shape == "mutated":
        body = orjson.dumps(draw(mutated(seed)))
    elif shape == "cut":
        whole = orjson.dumps(seed)
        body = whole[: draw(st.integers(0, len(whole) - 1))]
    else:
        body = draw(BROKEN_BODIES)
    return ask, Reply(body=body)


# -- the servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sluices(tmp_path_factory: pytest.TempPathFactory, _openai_server: FakeServer, _gemini_server: FakeServer, _ollama_server: FakeServer) -> Iterator[dict[str, tuple[ProxyProcess, FakeServer]]]:
    """One Sluice per provider type: no cache, no dedup, one attempt, a breaker that never opens."""
    fakes = {"openai": _openai_server, "gemini": _gemini_server, "ollama": _ollama_server}
    urls = {"openai": f"{_openai_server.url}/v1", "gemini": f"{_gemini_server.url}/v1beta", "ollama": _ollama_server.url}
    started: dict[str, tuple[ProxyProcess, FakeServer]] = {}
    for kind in TYPES:
        config = {
            "providers": [{"name": kind, "type": kind, "base_url": urls[kind], "api_key": "upstream-secret"}],
            "routing": {"default_provider": kind},
            "cache": {"enabled": False},
            "dedup": {"enabled": False},
            "retry": {"max_attempts": 1},
            "breaker": {"failure_threshold": 1_000_000},
            "pricing_file": None,
        }
        started[kind] = (ProxyProcess(config, tmp_path_factory.mktemp(f"fuzz-{kind}")).wait_ready(), fakes[kind])
    yield started
    for proxy, _ in started.values():
        proxy.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http


def check(response: httpx.Response) -> None:
    """No 5xx but a real upstream failure's; errors in OpenAI's shape; a stream never ends in a 500 event."""
    status = response.status_code
    event(f"HTTP {status}")  # pytest --hypothesis-show-statistics: how many examples got how far
    assert status < 500 or status in UPSTREAM_FAILURES, (status, response.text)
    assert b'"internal_error"' not in response.content, response.text
    if status >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["code"], str)


@pytest.mark.parametrize("kind", TYPES)
@FUZZ
@given(data=st.data())
def test_any_client_body_gets_an_answer_or_a_4xx(kind: str, data: st.DataObject, sluices, client: httpx.Client) -> None:
    proxy, fake = sluices[kind]
    fake.replies.clear()
    path, body = data.draw(st.sampled_from(["chat/completions", "chat/completions", "embeddings"]).flatmap(
        lambda p: st.tuples(st.just(p), chat_body(kind) if p == "chat/completions" else embeddings_body(kind))
    ))
    check(client.post(f"{proxy.url}/v1/{path}", content=orjson.dumps(body), headers={"Content-Type": "application/json"}))


@pytest.mark.parametrize("kind", TYPES)
@FUZZ
@given(data=st.data())
def test_any_upstream_answer_gets_an_answer_or_a_502(kind: str, data: st.DataObject, sluices, client: httpx.Client) -> None:
    proxy, fake = sluices[kind]
    fake.replies.clear()
    ask, reply = data.draw(upstream_reply(kind))
    fake.script(reply)
    if ask == "embeddings":
        path, body = "embeddings", {"model": EMBEDDING_MODELS[kind], "input": "hello"}
    else:
        path, body = "chat/completions", {"model": MODELS[kind], "messages": [{"role": "user", "content": "hi"}], "stream": ask == "stream"}
    response = client.post(f"{proxy.url}/v1/{path}", json=body)
    check(response)
    assert not fake.replies, "the scripted answer was used"
