"""The Responses API end to end: the official ``openai`` SDK (and the OpenAI Agents SDK) →
the real Sluice server → every provider type's fake, native and bridged."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pydantic
import pytest

from tests.fakes.gemini import FakeGemini, candidate, usage_metadata
from tests.fakes.gemini import response as gemini_response
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai_responses import ResponsesState, response_events
from tests.fakes.server import Reply
from tests.proxy_process import ProxyProcess
from tests.redis_server import RedisServer, redis_server  # noqa: F401

NATIVE = "openai/gpt-4o-mini"
BRIDGED_OPENAI = "chat-only/gpt-4o-mini"
GEMINI = "gemini/gemini-2.5-flash"
OLLAMA = "ollama/llama3.1"
EVERY = pytest.mark.parametrize("model", [NATIVE, BRIDGED_OPENAI, GEMINI, OLLAMA])
BRIDGED = pytest.mark.parametrize("model", [BRIDGED_OPENAI, GEMINI, OLLAMA])
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


def config(openai_fake: FakeOpenAI, gemini: FakeGemini, ollama: FakeOllama, **sections: Any) -> dict[str, Any]:
    """Every provider type on the fakes, and the fake OpenAI once more as a chat-only upstream."""
    data: dict[str, Any] = {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": openai_fake.url + "/v1", "api_key": "sk-upstream"},
            {
                "name": "chat-only",
                "type": "openai",
                "base_url": openai_fake.url + "/v1",
                "api_key": "sk-upstream",
                "responses": False,
            },
            {"name": "gemini", "type": "gemini", "base_url": gemini.url + "/v1beta", "api_key": "g-secret"},
            {"name": "ollama", "type": "ollama", "base_url": ollama.url},
        ],
        "models": [  # the Agents SDK reads a "provider/" prefix itself: it gets aliases
            {"name": "weather-gemini", "targets": [{"provider": "gemini", "model": "gemini-2.5-flash"}]},
            {"name": "weather-ollama", "targets": [{"provider": "ollama", "model": "llama3.1"}]},
        ],
        "retry": {"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5},
        "cache": {"enabled": False},
        "pricing_file": None,
    }
    data.update(sections)
    return data


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    _openai_server: FakeOpenAI,
    _gemini_server: FakeGemini,
    _ollama_server: FakeOllama,
) -> Iterator[ProxyProcess]:
    process = ProxyProcess(config(_openai_server, _gemini_server, _ollama_server), tmp_path_factory.mktemp("responses"))
    yield process.wait_ready()
    process.stop()


@pytest.fixture
def fakes(
    fake_openai: FakeOpenAI, fake_gemini: FakeGemini, fake_ollama: FakeOllama
) -> tuple[FakeOpenAI, FakeGemini, FakeOllama]:
    return fake_openai, fake_gemini, fake_ollama


@pytest.fixture
def client(proxy: ProxyProcess, fakes: Any) -> openai.OpenAI:
    return sdk(proxy)


def sdk(proxy: ProxyProcess, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


# -- one turn, every provider --


@EVERY
def test_create(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(model=model, input="hello there", instructions="Be brief.")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "echo: hello there"
    assert (
        response.usage is not None
        and response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    )


@EVERY
def test_stream(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="one two three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert (
        "".join(event.delta for event in events if event.type == "response.output_text.delta") == "echo: one two three"
    )
    assert final.output_text == "echo: one two three"
    assert final.id == events[0].response.id


@pytest.mark.parametrize("model", [GEMINI, OLLAMA])
def test_an_answer_cut_by_max_output_tokens_is_incomplete(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(model=model, input="one two three four five", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    with client.responses.stream(model=model, input="one two three four five", max_output_tokens=2) as stream:
        last = [event for event in stream][-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"


class Echo(pydantic.BaseModel):
    echo: str


@pytest.mark.parametrize("model", [GEMINI, OLLAMA])
def test_structured_output_with_parse(client: openai.OpenAI, model: str) -> None:
    """``responses.parse`` sends ``text.format`` json_schema; bridged, it is the chat ``response_format``."""
    response = client.responses.parse(model=model, input="hi", text_format=Echo)
    assert response.output_parsed == Echo(echo="hi")


def test_bridged_openai_goes_through_chat_completions(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    client.responses.create(model=BRIDGED_OPENAI, input="hi", metadata={"team": "a"}, max_output_tokens=40)
    (call,) = fake_openai.calls("/chat/completions")
    assert not fake_openai.calls("/responses")
    sent = call.json
    assert sent["max_completion_tokens"] == 40
    assert "metadata" not in sent and "store" not in sent


def test_native_request_reaches_openai_as_sent(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    """Body as sent (model routed); the client's OpenAI-Beta passed on, its OpenAI-Organization not
    with Sluice's own key (tests/test_security.py)."""
    extra = {"OpenAI-Beta": "responses=experimental", "OpenAI-Organization": "org-of-the-caller"}
    client.responses.create(model=NATIVE, input="hi", store=False, stream=False, extra_headers=extra)
    (call,) = fake_openai.calls("/responses")
    assert call.json == {"model": "gpt-4o-mini", "input": "hi", "store": False, "stream": False}
    assert call.headers["authorization"] == "Bearer sk-upstream"
    assert call.headers["openai-beta"] == "responses=experimental"
    assert "openai-organization" not in call.headers


def test_native_with_the_callers_own_key(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama]
) -> None:
    """pass_client_key: the caller's key makes the response and reads it back; no other provider sees it."""
    data = config(*fakes)
    data["providers"][0] = {**data["providers"][0], "api_key": "", "pass_client_key": True}
    client = sdk(start_proxy(data), "sk-callers-own")
    fake_openai, fake_gemini, _ = fakes
    created = client.responses.create(model=NATIVE, input="mine")
    assert client.responses.retrieve(created.id).id == created.id
    assert {call.headers["authorization"] for call in fake_openai.requests} == {"Bearer sk-callers-own"}
    client.responses.create(model=GEMINI, input="elsewhere")
    assert all("sk-callers-own" not in str(call.headers) for call in fake_gemini.requests)


@BRIDGED
def test_built_in_tools_are_refused_in_openai_shape(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=model, input="hi", tools=[{"type": "web_search_preview"}])
    assert "web_search_preview" in refused.value.body["message"]
    assert refused.value.body["param"] == "tools[0].type"


@pytest.mark.parametrize("end", ["cut", "failed"])
def test_a_native_stream_that_does_not_complete_ends_in_an_error_and_is_not_cached(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama], end: str
) -> None:
    fake_openai = fakes[0]
    client = sdk(start_proxy(config(*fakes, cache={"enabled": True}, retry={"max_attempts": 1})))
    status, response = ResponsesState().create({"model": "gpt-4o-mini", "input": "unlucky"})
    frames = response_events(response)[:-1]
    if end == "failed":
        failed = {**response, "status": "failed", "error": {"code": "server_error", "message": "model crashed"}}
        frames.append(
            b"event: response.failed\ndata: "
            + orjson.dumps({"type": "response.failed", "response": failed, "sequence_number": len(frames)})
            + b"\n\n"
        )
    fake_openai.script(Reply(body=b"".join(frames), headers={"content-type": "text/event-stream"}))
    seen: list[str] = []
    with pytest.raises(openai.APIError), client.responses.stream(model=NATIVE, input="unlucky") as stream:
        seen.extend(event.type for event in stream)
    assert seen[0] == "response.created"
    again = client.responses.with_raw_response.create(model=NATIVE, input="unlucky")
    assert again.headers["x-sluice-cache"] == "miss"


@pytest.mark.parametrize("model", [NATIVE, BRIDGED_OPENAI])
def test_slow_first_tokens_keep_the_stream_alive_and_a_final_failure_is_raised(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama], model: str
) -> None:
    fake_openai = fakes[0]
    proxy = start_proxy(config(*fakes, server={"stream_keepalive_seconds": 0.05}, retry={"max_attempts": 1}))
    client = sdk(proxy)
    gate = threading.Event()
    fake_openai.script(Reply(status=400, json={"error": {"message": "bad things", "type": "invalid_request_error"}}, gate=gate))
    try:
        stream = client.responses.create(model=model, input="think hard", stream=True)  # the head is in, upstream gated
    finally:
        gate.set()
    with pytest.raises(openai.APIError, match="bad things"):
        list(stream)
    with client.responses.stream(model=model, input="think again") as answered:
        assert answered.get_final_response().output_text == "echo: think again"


# -- stored responses --


@EVERY
def test_retrieve_input_items_delete(client: openai.OpenAI, fake_openai: FakeOpenAI, model: str) -> None:
    """Native: forwarded to the provider that made the response, query included; bridged: Sluice's own."""
    created = client.responses.create(model=model, input="keep me")
    retrieved = client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output_text == "echo: keep me"
    items = client.responses.input_items.list(created.id, limit=5)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text == "keep me"  # type: ignore[union-attr]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    forwarded = [(call.method, call.path, call.query) for call in fake_openai.calls(f"/responses/{created.id}")]
    if model == NATIVE:  # once the provider deleted it, Sluice forgets the id too
        assert forwarded == [
            ("GET", f"/v1/responses/{created.id}", ""),
            ("GET", f"/v1/responses/{created.id}/input_items", "limit=5"),
            ("DELETE", f"/v1/responses/{created.id}", ""),
        ]
    else:
        assert forwarded == []


@pytest.mark.parametrize("model", [GEMINI, OLLAMA])
def test_function_tool_conversation_through_previous_response_id(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, input="weather in Paris?", tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert call.id is not None and call.id.startswith("fc_")
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}],
        tools=[WEATHER],
    )
    assert "sunny, 21C" in second.output_text
    assert second.previous_response_id == first.id
    third = client.responses.create(model=model, previous_response_id=second.id, input="thanks")
    assert third.output_text == "echo: thanks"
    items = client.responses.input_items.list(third.id, order="asc")
    assert [item.type for item in items.data] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]


def test_unknown_previous_response_id_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=GEMINI, previous_response_id="resp_unknown", input="hi")
    assert missing.value.body["message"] == "Previous response with id 'resp_unknown' not found."


@pytest.mark.parametrize("model", [GEMINI, NATIVE])
def test_a_response_is_404_to_another_key(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama], model: str
) -> None:
    """Sluice's own upstream key serves both teams: a native response is guarded as a stored one is."""
    keys = [{"name": "team-a", "key": "sk-team-a"}, {"name": "team-b", "key": "sk-team-b"}]
    proxy = start_proxy(config(*fakes, auth={"keys": keys}))
    mine, theirs = sdk(proxy, "sk-team-a"), sdk(proxy, "sk-team-b")
    created = mine.responses.create(model=model, input="private")
    assert mine.responses.retrieve(created.id).output_text == "echo: private"
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model=model, previous_response_id=created.id, input="and?")
    assert mine.responses.retrieve(created.id).id == created.id


def test_stored_responses_are_shared_through_redis(
    start_proxy: Callable[..., ProxyProcess],
    fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    shared = config(*fakes, cache={"enabled": True, "backend": "redis", "redis_url": redis_server.url})
    one, two = sdk(start_proxy(shared)), sdk(start_proxy(shared))
    created = one.responses.create(model=OLLAMA, input="weather in Paris?", tools=[WEATHER])
    assert two.responses.retrieve(created.id).output[0].type == "function_call"
    call = created.output[0]
    answer = two.responses.create(
        model=OLLAMA,
        previous_response_id=created.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],  # type: ignore[union-attr]
    )
    assert "rainy" in answer.output_text
    one.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError):
        two.responses.retrieve(answer.id)


# -- legacy completions --


def test_legacy_completions_on_openai(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    answer = client.completions.create(model=NATIVE, prompt="say hi")
    assert answer.choices[0].text == "echo: say hi"
    chunks = list(client.completions.create(model=NATIVE, prompt="say hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: say hi"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=GEMINI, prompt="say hi")


def test_a_cached_legacy_completion_replays_as_a_stream(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama]
) -> None:
    client = sdk(start_proxy(config(*fakes, cache={"enabled": True})))
    answer = client.completions.create(model=NATIVE, prompt="again")
    replayed = client.completions.with_raw_response.create(model=NATIVE, prompt="again", stream=True)
    assert replayed.headers["x-sluice-cache"] == "hit"
    chunks = list(replayed.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer.choices[0].text == "echo: again"
    assert chunks[0].id == answer.id


# -- cache and dedup --


@pytest.mark.parametrize("model", [NATIVE, GEMINI])
def test_identical_requests_hit_the_cache_streams_included(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama], model: str
) -> None:
    client = sdk(start_proxy(config(*fakes, cache={"enabled": True})))
    first = client.responses.with_raw_response.create(model=model, input="cache me")
    again = client.responses.with_raw_response.create(model=model, input="cache me")
    assert (first.headers["x-sluice-cache"], again.headers["x-sluice-cache"]) == ("miss", "hit")
    assert without_ids(again.parse()) == without_ids(first.parse())
    with client.responses.stream(model=model, input="cache me") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "echo: cache me"
    assert (final.id == first.parse().id) == (model == NATIVE)  # a bridged hit is a response of its own
    assert client.responses.retrieve(final.id).id == final.id


def without_ids(response: Any) -> dict[str, Any]:
    """A response's content: what a cache hit shares with the answer it replays."""
    data = response.model_dump()
    data.pop("id"), data.pop("created_at")
    for item in data["output"]:
        item.pop("id")
    return data


@BRIDGED
@pytest.mark.parametrize("streaming", [False, True])
def test_a_bridged_cache_hit_is_a_response_of_its_own(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama], model: str, streaming: bool
) -> None:
    """Deleting the first answer leaves the hit's id alive: GET, input_items and previous_response_id work on it."""
    client = sdk(start_proxy(config(*fakes, cache={"enabled": True})))
    first = client.responses.create(model=model, input="remember 7")
    client.responses.delete(first.id)
    raw = client.responses.with_raw_response.create(model=model, input="remember 7", stream=streaming)
    assert raw.headers["x-sluice-cache"] == "hit"
    again = [event for event in raw.parse()][-1].response if streaming else raw.parse()  # type: ignore[union-attr]
    assert again.id != first.id and again.output[0].id != first.output[0].id
    assert again.output_text == first.output_text == "echo: remember 7"
    assert client.responses.retrieve(again.id).model_dump() == again.model_dump()
    assert [item.type for item in client.responses.input_items.list(again.id).data] == ["message"]
    follow_up = client.responses.create(model=model, previous_response_id=again.id, input="which number?")
    assert follow_up.output_text == "echo: which number?" and follow_up.previous_response_id == again.id
    history = [item.type for item in client.responses.input_items.list(follow_up.id, order="asc").data]
    assert history == ["message", "message", "message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_a_cached_native_response_is_not_handed_out_once_deleted(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama]
) -> None:
    """The id is OpenAI's: a hit replays it while OpenAI keeps it; after a DELETE the next create is a miss."""
    fake_openai = fakes[0]
    client = sdk(start_proxy(config(*fakes, cache={"enabled": True})))
    first = client.responses.create(model=NATIVE, input="native cache")
    hit = client.responses.with_raw_response.create(model=NATIVE, input="native cache")
    assert hit.headers["x-sluice-cache"] == "hit" and hit.parse().id == first.id
    client.responses.delete(first.id)
    fresh = client.responses.with_raw_response.create(model=NATIVE, input="native cache")
    assert fresh.headers["x-sluice-cache"] == "miss" and fresh.parse().id != first.id
    assert client.responses.retrieve(fresh.parse().id).output_text == "echo: native cache"
    assert client.responses.with_raw_response.create(model=NATIVE, input="native cache").headers["x-sluice-cache"] == "hit"
    assert len(fake_openai.calls("/v1/responses")) == 2 + 2  # two creates, one DELETE and one GET
    unstored = {"model": NATIVE, "input": "not stored", "store": False}
    client.responses.create(**unstored)
    assert client.responses.with_raw_response.create(**unstored).headers["x-sluice-cache"] == "hit"


@BRIDGED
def test_a_bridged_cache_hit_echoes_its_own_user_and_metadata(
    start_proxy: Callable[..., ProxyProcess], fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama], model: str
) -> None:
    """``user`` is not in the key (CONTRACT §6) and reaches no bridged provider as an answer-changing field:
    each hit echoes the caller's own. ``metadata`` is in the key: OpenAI keeps it with a native response."""
    client = sdk(start_proxy(config(*fakes, cache={"enabled": True})))
    alice = client.responses.with_raw_response.create(model=model, input="same", user="alice", metadata={"team": "a"})
    bob = client.responses.with_raw_response.create(model=model, input="same", user="bob", metadata={"team": "a"})
    assert (alice.headers["x-sluice-cache"], bob.headers["x-sluice-cache"]) == ("miss", "hit")
    assert (alice.parse().user, bob.parse().user) == ("alice", "bob")
    assert client.responses.retrieve(bob.parse().id).user == "bob"
    other = client.responses.with_raw_response.create(model=model, input="same", user="bob", metadata={"team": "b"})
    assert other.headers["x-sluice-cache"] == "miss" and other.parse().metadata == {"team": "b"}


def gated_answer(model: str, streaming: bool, gate: threading.Event) -> Reply:
    """The upstream's answer to "together", held until ``gate`` opens."""
    if model == NATIVE:
        status, response = ResponsesState().create({"model": "gpt-4o-mini", "input": "together"})
        if streaming:
            return Reply(
                gate=gate, body=b"".join(response_events(response)), headers={"content-type": "text/event-stream"}
            )
        return Reply(gate=gate, json=response)
    answer = gemini_response([candidate([{"text": "echo: together"}])], usage_metadata(5, 3))
    return Reply(gate=gate, chunks=[answer]) if streaming else Reply(gate=gate, json=answer)


async def until_joined(proxy: ProxyProcess, followers: int) -> None:
    """Wait until the proxy reports ``followers`` requests waiting on one flight."""
    async with httpx.AsyncClient() as http:
        while (await http.get(f"{proxy.url}/stats")).json()["dedup"].get("waiting", 0) < followers:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("model", [NATIVE, GEMINI])
@pytest.mark.parametrize("streaming", [False, True])
def test_identical_requests_in_flight_share_one_call(
    start_proxy: Callable[..., ProxyProcess],
    fakes: tuple[FakeOpenAI, FakeGemini, FakeOllama],
    model: str,
    streaming: bool,
) -> None:
    fake_openai, fake_gemini, _ = fakes
    proxy = start_proxy(config(*fakes, cache={"enabled": True}))
    upstream = fake_openai if model == NATIVE else fake_gemini
    gate = threading.Event()
    upstream.script(gated_answer(model, streaming, gate))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)

    async def ask() -> tuple[str, str]:
        if streaming:
            async with client.responses.stream(model=model, input="together") as stream:
                final = await stream.get_final_response()
            return final.id, final.output_text
        response = await client.responses.create(model=model, input="together")
        return response.id, response.output_text

    async def scenario() -> list[tuple[str, str]]:
        tasks = [asyncio.create_task(ask()) for _ in range(3)]
        await until_joined(proxy, 2)
        gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert len(upstream.requests) == 1
    assert len(set(results)) == 1 and results[0][1] == "echo: together"


# -- the OpenAI Agents SDK --


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("model", ["weather-gemini", "weather-ollama"])
def test_agents_sdk_runner_with_a_function_tool(proxy: ProxyProcess, fakes: Any, model: str, streamed: bool) -> None:
    from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled

    set_tracing_disabled(True)
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0), use_for_tracing=False
    )
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agent = Agent(name="Weather", instructions="Use the tool.", tools=[get_weather], model=model)
    if streamed:

        async def run() -> Any:
            result = Runner.run_streamed(agent, "weather in Paris?")
            async for _ in result.stream_events():
                pass
            return result

        result = asyncio.run(run())
    else:
        result = Runner.run_sync(agent, "weather in Paris?")
    assert calls == ["Paris"]
    assert "sunny in Paris" in result.final_output


def test_a_conversation_sluice_keeps_continues_bridged_on_a_native_target(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """The native upstream never saw the stored response: its history goes as Chat Completions."""
    first = client.responses.create(model=GEMINI, input="remember the number 7")
    second = client.responses.create(model=NATIVE, previous_response_id=first.id, input="which number?")
    assert second.output_text == "echo: which number?"
    assert fake_openai.calls("/v1/responses") == []
    (call,) = fake_openai.calls("/v1/chat/completions")
    sent = orjson.dumps(call.json["messages"]).decode()
    assert sent.index("remember the number 7") < sent.index("echo: remember the number 7") < sent.index("which number?")
