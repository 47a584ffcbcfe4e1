"""The semantic cache end to end: the official ``openai`` and ``anthropic`` SDKs → the real Sluice
server → the fake upstreams, for each client API; its scope, its guard against near-misses, its
switches, Redis sharing, and the memory bound of its index."""

from __future__ import annotations

import tracemalloc
from typing import Any

import anthropic
import httpx
import numpy as np
import openai
import pytest

from proxy.cache.semantic import SemanticIndex
from proxy.cache.terms import key_terms, normalize
from proxy.surfaces.chat import ChatSurface
from proxy.surfaces.messages import MessagesSurface
from proxy.surfaces.response_store import MemoryResponseStore
from proxy.surfaces.responses import ResponsesSurface
from tests.conftest import openai_config
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.redis_server import RedisServer, redis_server  # noqa: F401

QUESTION = "Convert 5 km to miles"
PARAPHRASE = "Can you convert 5 km to miles, please?"


def semantic(fake: FakeOpenAI, mode: str = "on", **sections: Any) -> dict[str, Any]:
    cache = {"semantic": {"mode": mode}, **sections.pop("cache", {})}
    return openai_config(fake, cache=cache, **sections)


def ask(proxy, text: str, *, model: str = "gpt-4o-mini", key: str = "unused", headers: dict[str, str] | None = None, **params: Any):  # type: ignore[no-untyped-def]
    """One chat completion through the SDK; returns (answer text, raw response headers)."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    params.setdefault("temperature", 0)
    messages = params.pop("messages", [{"role": "user", "content": text}])
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, extra_headers=headers or {}, **params
    )
    return raw.parse().choices[0].message.content, raw.headers


def upstream_calls(fake: FakeOpenAI) -> int:
    return len(fake.calls("/chat/completions"))


def test_a_paraphrase_gets_the_earlier_answer_and_is_counted_apart(start_proxy, fake_openai) -> None:
    proxy = start_proxy(semantic(fake_openai))
    first, headers = ask(proxy, QUESTION)
    assert headers["x-sluice-cache"] == "miss"
    again, headers = ask(proxy, PARAPHRASE)
    assert again == first == f"echo: {QUESTION}", "the earlier request's answer"
    assert headers["x-sluice-cache"] == "semantic"
    assert 0.85 <= float(headers["x-sluice-similarity"]) <= 1.0
    assert headers["x-sluice-attempts"] == "0" and upstream_calls(fake_openai) == 1
    stats = httpx.get(f"{proxy.url}/stats").json()
    assert stats["cache"]["semantic_hits"] == 1 and stats["cache"]["hits"] == 0 and stats["cache"]["misses"] == 1
    assert stats["cache"]["semantic_entries"] == 1
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'sluice_cache_events_total{result="semantic"} 1.0' in metrics


def test_a_streaming_client_gets_a_semantic_hit_as_sse(start_proxy, fake_openai) -> None:
    proxy = start_proxy(semantic(fake_openai))
    ask(proxy, QUESTION)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", temperature=0, stream=True, messages=[{"role": "user", "content": PARAPHRASE}]
    ) as response:
        assert response.headers["x-sluice-cache"] == "semantic"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == f"echo: {QUESTION}" and upstream_calls(fake_openai) == 1


@pytest.mark.parametrize(
    "near_miss",
    [
        "Convert 5 miles to km",
        "Convert 6 km to miles",
        "Convert 5 km to feet",
        "Do not convert 5 km to miles",
    ],
)
def test_a_near_miss_never_hits(start_proxy, fake_openai, near_miss: str) -> None:
    proxy = start_proxy(semantic(fake_openai))
    ask(proxy, QUESTION)
    answer, headers = ask(proxy, near_miss)
    assert headers["x-sluice-cache"] == "miss" and answer == f"echo: {near_miss}"
    assert upstream_calls(fake_openai) == 2


def test_opt_in_mode_needs_the_header_and_off_in_the_header_wins(start_proxy, fake_openai) -> None:
    proxy = start_proxy(semantic(fake_openai, mode="opt-in"))
    ask(proxy, QUESTION, headers={"X-Sluice-Semantic": "on"})
    assert ask(proxy, PARAPHRASE)[1]["x-sluice-cache"] == "miss", "not opted in"
    assert ask(proxy, PARAPHRASE + " ", headers={"X-Sluice-Semantic": "on"})[1]["x-sluice-cache"] == "semantic"
    on = start_proxy(semantic(fake_openai, mode="on"))
    ask(on, QUESTION)
    assert ask(on, PARAPHRASE, headers={"X-Sluice-Semantic": "off"})[1]["x-sluice-cache"] == "miss"


def test_off_by_default(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai))
    ask(proxy, QUESTION)
    assert ask(proxy, PARAPHRASE, headers={"X-Sluice-Semantic": "on"})[1]["x-sluice-cache"] == "miss"


def test_only_deterministic_requests_take_part(start_proxy, fake_openai) -> None:
    proxy = start_proxy(semantic(fake_openai))
    ask(proxy, QUESTION, temperature=0.7)
    assert ask(proxy, PARAPHRASE, temperature=0.7)[1]["x-sluice-cache"] == "miss"
    tools = [{"type": "function", "function": {"name": "convert", "parameters": {"type": "object", "properties": {}}}}]
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    for text in (QUESTION, PARAPHRASE):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", temperature=0, tools=tools, messages=[{"role": "user", "content": text}]  # type: ignore[list-item]
        )
    assert raw.headers["x-sluice-cache"] == "miss"


def test_another_key_model_or_system_prompt_never_hits(start_proxy, fake_openai) -> None:
    keys = [{"name": "team-a", "key": "sk-team-a"}, {"name": "team-b", "key": "sk-team-b"}]
    proxy = start_proxy(semantic(fake_openai, auth={"keys": keys}))
    ask(proxy, QUESTION, key="sk-team-a")
    assert ask(proxy, PARAPHRASE, key="sk-team-b")[1]["x-sluice-cache"] == "miss", "another caller"
    assert ask(proxy, PARAPHRASE, key="sk-team-a", model="gpt-4o")[1]["x-sluice-cache"] == "miss", "another model"
    system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": PARAPHRASE}]
    assert ask(proxy, "", key="sk-team-a", messages=system)[1]["x-sluice-cache"] == "miss", "another system prompt"
    assert ask(proxy, PARAPHRASE, key="sk-team-a", max_tokens=5)[1]["x-sluice-cache"] == "miss", "other parameters"
    assert ask(proxy, PARAPHRASE, key="sk-team-a")[1]["x-sluice-cache"] == "semantic", "the same scope"


def test_a_bad_switch_is_a_400(start_proxy, fake_openai) -> None:
    proxy = start_proxy(semantic(fake_openai))
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers={"X-Sluice-Semantic": "maybe"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "X-Sluice-Semantic"


def test_workers_share_entries_through_redis(start_proxy, fake_openai, redis_server: RedisServer) -> None:  # noqa: F811
    config = semantic(fake_openai, cache={"backend": "redis", "redis_url": redis_server.url})
    one, other = start_proxy(config), start_proxy(config)
    first, _ = ask(one, QUESTION)
    answer, headers = ask(other, PARAPHRASE)
    assert headers["x-sluice-cache"] == "semantic" and answer == first
    assert upstream_calls(fake_openai) == 1
    assert "x-sluice-similarity" in headers


def test_the_index_keeps_its_entry_bound_and_its_memory_bound() -> None:
    """At most ``max_entries``, oldest out first; 10,000 entries of the built-in
    64-dimension model take under 16 MB (semantic.py states ~1 KB + 4 × dimensions each)."""
    rng = np.random.default_rng(15)
    index = SemanticIndex(max_entries=10_000)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for n in range(10_000):
        vector = rng.standard_normal(64).astype(np.float32)
        terms = key_terms(normalize(f"how many miles is {n} km from the station number {n * 7}"))
        index.add(f"{n % 50:032x}", vector / np.linalg.norm(vector), terms, f"{n:040x}")
    used = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(index) == 10_000 and used < 16 * 1024 * 1024, used
    for n in range(10_000, 15_000):
        index.add("scope", np.ones(64, dtype=np.float32) / 8, ("q", str(n)), f"{n:040x}")
    assert len(index) == 10_000
    oldest = key_terms(normalize("how many miles is 0 km from the station number 0"))
    assert index._groups.get((f"{0:032x}", oldest)) is None, "the oldest went first"


def test_key_terms_keep_what_changes_the_answer() -> None:
    def same(a: str, b: str) -> bool:
        return key_terms(normalize(a)) == key_terms(normalize(b))

    assert same("Convert 5 km to miles", "Can you convert 5 KM to miles, please?")
    assert same("What is the capital of France?", "what's the capital of france")
    assert not same("5 km in miles", "5 miles in km")
    assert not same("Is it safe?", "Isn't it safe?")
    assert not same("What is 3.5% of 200?", "What is 3.5 of 200?")
    assert not same("flights from London to Paris", "flights from Paris to London")


def test_a_provider_embeddings_endpoint_can_be_the_embedder(start_proxy, fake_openai) -> None:
    embedder = {"provider": "openai", "model": "text-embedding-3-small"}
    proxy = start_proxy(openai_config(fake_openai, cache={"semantic": {"mode": "on", "embedder": embedder}}))
    ask(proxy, QUESTION)
    answer, headers = ask(proxy, "convert 5 km to miles")
    assert headers["x-sluice-cache"] == "semantic" and answer == f"echo: {QUESTION}"
    embeddings = fake_openai.calls("/embeddings")
    assert [call.json for call in embeddings] == [{"model": "text-embedding-3-small", "input": "convert 5 km to miles"}] * 2
    assert all(call.headers["authorization"] == "Bearer sk-upstream-secret-123" for call in embeddings)


def test_a_key_can_opt_in_and_the_header_still_wins(start_proxy, fake_openai) -> None:
    keys = [{"name": "bot", "key": "sk-bot", "semantic": True}, {"name": "team", "key": "sk-team"}]
    proxy = start_proxy(semantic(fake_openai, mode="opt-in", auth={"keys": keys}))
    ask(proxy, QUESTION, key="sk-bot")
    assert ask(proxy, PARAPHRASE, key="sk-bot")[1]["x-sluice-cache"] == "semantic", "the key opted in"
    assert ask(proxy, PARAPHRASE + " ", key="sk-bot", headers={"X-Sluice-Semantic": "off"})[1]["x-sluice-cache"] == "miss"
    ask(proxy, QUESTION, key="sk-team")
    assert ask(proxy, PARAPHRASE, key="sk-team")[1]["x-sluice-cache"] == "miss", "this key did not"


# -- Messages and Responses: the same cache, each answer in its client's API ------------------


def every_api_config(fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic) -> dict[str, Any]:
    """OpenAI natively (chat, Responses), the same fake as a chat-only upstream (Responses bridged)
    and Anthropic natively (Messages); the semantic cache on."""
    config = semantic(fake_openai)
    config["providers"] += [
        {"name": "chat-only", "type": "openai", "base_url": f"{fake_openai.url}/v1", "api_key": "sk-up", "responses": False},
        {"name": "anthropic", "type": "anthropic", "base_url": f"{fake_anthropic.url}/v1", "api_key": "sk-ant"},
    ]
    return config


def ask_messages(proxy, text: str, *, model: str = "anthropic/claude-sonnet-4-5-20250929", system: str | None = None):  # type: ignore[no-untyped-def]
    """One Messages request through the ``anthropic`` SDK; returns (answer text, raw headers)."""
    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    extra = {"system": system} if system is not None else {}
    raw = client.messages.with_raw_response.create(  # the SDK has no ``temperature`` of its own any more
        model=model, max_tokens=64, messages=[{"role": "user", "content": text}], extra_body={"temperature": 0}, **extra
    )
    return raw.parse().content[0].text, raw.headers  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["anthropic/claude-sonnet-4-5-20250929", "openai/gpt-4o-mini"])
def test_a_messages_paraphrase_gets_the_earlier_answer_native_or_translated(
    start_proxy, fake_openai, fake_anthropic, model: str  # type: ignore[no-untyped-def]
) -> None:
    proxy = start_proxy(every_api_config(fake_openai, fake_anthropic))
    first, headers = ask_messages(proxy, QUESTION, model=model)
    assert headers["x-sluice-cache"] == "miss" and first == f"echo: {QUESTION}"
    again, headers = ask_messages(proxy, PARAPHRASE, model=model)
    assert (again, headers["x-sluice-cache"]) == (first, "semantic")
    assert 0.85 <= float(headers["x-sluice-similarity"]) <= 1.0
    assert len(fake_anthropic.calls("/messages")) + upstream_calls(fake_openai) == 1

    near, headers = ask_messages(proxy, "Convert 5 miles to km", model=model)
    assert headers["x-sluice-cache"] == "miss" and near == "echo: Convert 5 miles to km"
    _, headers = ask_messages(proxy, PARAPHRASE, model=model, system="Answer in French.")
    assert headers["x-sluice-cache"] == "miss", "another system prompt is another scope"


def test_a_streaming_messages_client_gets_a_semantic_hit_as_its_own_events(start_proxy, fake_openai, fake_anthropic) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(every_api_config(fake_openai, fake_anthropic))
    ask_messages(proxy, QUESTION)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    with client.messages.stream(
        model="anthropic/claude-sonnet-4-5-20250929",
        max_tokens=64,
        messages=[{"role": "user", "content": PARAPHRASE}],
        extra_body={"temperature": 0},
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == f"echo: {QUESTION}" and message.stop_reason == "end_turn"
    assert len(fake_anthropic.calls("/messages")) == 1


def test_an_entry_answers_only_its_own_client_api(start_proxy, fake_openai, fake_anthropic) -> None:  # type: ignore[no-untyped-def]
    """The exact cache keeps each API's answers in that API's form: a chat request never takes a
    Messages request's answer (nor the reverse), however alike their questions."""
    proxy = start_proxy(every_api_config(fake_openai, fake_anthropic))
    ask_messages(proxy, QUESTION, model="openai/gpt-4o-mini")
    _, headers = ask(proxy, PARAPHRASE, model="openai/gpt-4o-mini")
    assert headers["x-sluice-cache"] == "miss"
    assert upstream_calls(fake_openai) == 2


def respond(proxy, text: str | list[dict[str, Any]], *, model: str, **params: Any):  # type: ignore[no-untyped-def]
    """One Responses request through the ``openai`` SDK; returns (response, raw headers)."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    raw = client.responses.with_raw_response.create(model=model, input=text, temperature=0, **params)  # type: ignore[arg-type]
    return raw.parse(), raw.headers


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "chat-only/gpt-4o-mini"])
def test_a_responses_paraphrase_gets_the_earlier_answer_native_or_bridged(
    start_proxy, fake_openai, fake_anthropic, model: str  # type: ignore[no-untyped-def]
) -> None:
    proxy = start_proxy(every_api_config(fake_openai, fake_anthropic))
    first, headers = respond(proxy, QUESTION, model=model)
    assert headers["x-sluice-cache"] == "miss" and first.output_text == f"echo: {QUESTION}"
    items = [{"role": "user", "content": [{"type": "input_text", "text": PARAPHRASE}]}]
    again, headers = respond(proxy, items, model=model)
    assert (again.output_text, headers["x-sluice-cache"]) == (first.output_text, "semantic")
    assert len(fake_openai.calls("/responses")) + upstream_calls(fake_openai) == 1
    _, headers = respond(proxy, PARAPHRASE, model=model, instructions="Answer in French.")
    assert headers["x-sluice-cache"] == "miss", "other instructions are another scope"


def test_a_bridged_responses_hit_is_a_response_of_its_own(start_proxy, fake_openai, fake_anthropic) -> None:  # type: ignore[no-untyped-def]
    """As an exact hit is: a new id that GET finds and that ``previous_response_id`` continues."""
    proxy = start_proxy(every_api_config(fake_openai, fake_anthropic))
    first, _ = respond(proxy, QUESTION, model="chat-only/gpt-4o-mini")
    hit, headers = respond(proxy, PARAPHRASE, model="chat-only/gpt-4o-mini")
    assert headers["x-sluice-cache"] == "semantic" and hit.id != first.id and hit.id.startswith("resp_")
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    assert client.responses.retrieve(hit.id).output_text == hit.output_text
    follow = client.responses.create(model="chat-only/gpt-4o-mini", input="And in feet?", previous_response_id=hit.id)
    assert follow.output_text == "echo: And in feet?"
    sent = fake_openai.calls("/chat/completions")[-1].json["messages"]
    texts = [m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"]) for m in sent]
    assert texts == [PARAPHRASE, f"echo: {QUESTION}", "And in feet?"], "the hit's own conversation"


RESPONSES = ResponsesSurface(MemoryResponseStore(ttl=60, max_entries=10))
TEXT_PART = {"type": "text", "text": "Convert 5 km"}
IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.mark.parametrize(
    ("surface", "body", "parts"),
    [
        (ChatSurface(), {"messages": [{"role": "user", "content": "hi"}]}, ("hi", {"messages": []})),
        (ChatSurface(), {"messages": [{"role": "user", "content": [TEXT_PART, TEXT_PART]}]}, ("Convert 5 km\nConvert 5 km", {"messages": []})),
        (ChatSurface(), {"messages": [{"role": "user", "content": [TEXT_PART, IMAGE_PART]}]}, None),
        (ChatSurface(), {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, None),
        (ChatSurface(), {"messages": [{"role": "user", "content": "  "}]}, None),
        (MessagesSurface(), {"system": "s", "messages": [{"role": "user", "content": [TEXT_PART]}]}, ("Convert 5 km", {"system": "s", "messages": []})),
        (MessagesSurface(), {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "9"}]}]}, None),
        (RESPONSES, {"input": "hi", "instructions": "i"}, ("hi", {"input": [], "instructions": "i"})),
        (RESPONSES, {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}, ("hi", {"input": []})),
        (RESPONSES, {"input": [{"role": "user", "content": "a"}, {"type": "function_call_output", "call_id": "c", "output": "9"}]}, None),
        (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, None),
        (RESPONSES, {"input": []}, None),
    ],
)
def test_what_each_api_compares_and_what_scopes_it(surface: Any, body: dict[str, Any], parts: Any) -> None:
    assert surface.semantic_parts(body) == parts
