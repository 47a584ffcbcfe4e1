"""Upstream SSE comments (``: ping``) reach streaming clients in their place, in every client API,
and never the cached answer; a stream that sends only comments and then fails is a failed attempt."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.dedup import Flight, Outcome
from proxy.errors import UpstreamProtocolError
from proxy.sse import KEPT_COMMENTS, MAX_EVENT_BYTES, Comment, StreamedBody
from tests.conftest import openai_config
from tests.fakes.anthropic import message, stream_events, text
from tests.fakes.openai import stream_chunks
from tests.fakes.server import Raw, Reply

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
CLAUDE = "claude-sonnet-4-5-20250929"
MESSAGES = {"model": CLAUDE, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], "stream": True}
NO_CACHE = {"Cache-Control": "no-cache"}
KEY = {"Authorization": "Bearer k"}  # the SDKs' own: the caller is part of the cache key


def _pinged(events: list[Any]) -> list[Any]:
    """``: ping N`` before the first three events and before the last one."""
    out: list[Any] = []
    for index, event in enumerate(events):
        if index < 3 or index == len(events) - 1:
            out.append(Raw(b": ping %d\n\n" % len(out)))
        out.append(event)
    return out


def _lines(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def _comments(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(":")]


def _after_each_comment(lines: list[str]) -> list[str]:
    """The line that follows each comment: where the comment was put."""
    return [lines[i + 1] for i, line in enumerate(lines) if line.startswith(":")]


# -- Chat Completions, OpenAI upstream --


def test_chat_stream_passes_comments_in_order_the_sdk_parses_it_and_the_replay_has_none(start_proxy, fake_openai) -> None:
    chunks = stream_chunks("gpt-4o-mini", "a b c")
    fake_openai.script(Reply(chunks=_pinged(chunks)), Reply(chunks=_pinged(stream_chunks("gpt-4o-mini", "a b c"))))
    proxy = start_proxy(openai_config(fake_openai))
    url = f"{proxy.url}/v1/chat/completions"

    lines = _lines(url, CHAT)
    assert _comments(lines) == [": ping 0", ": ping 2", ": ping 4", ": ping 8"]
    # each comment sits just before the event it preceded upstream (the last one before the usage
    # chunk, which this client did not ask for: so before [DONE])
    following = [json.loads(line[6:]) if line.startswith("data: {") else line for line in _after_each_comment(lines)]
    assert [event["choices"][0]["delta"] for event in following[:3]] == [c["choices"][0]["delta"] for c in chunks[:3]]
    assert following[3] == "data: [DONE]"

    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(**CHAT, extra_headers=NO_CACHE)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "a b c"

    replay = _lines(url, CHAT)
    assert _comments(replay) == []
    texts = [json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in replay if line.startswith("data: {")]
    assert "".join(texts) == "a b c"
    assert len(fake_openai.calls("/chat/completions")) == 2


# -- Messages, Anthropic upstream (native passthrough) --


def test_messages_native_stream_passes_comments_and_the_replay_has_none(start_proxy, fake_anthropic) -> None:
    events = stream_events(message([text("native answer here")], model=CLAUDE))
    fake_anthropic.script(Reply(chunks=_pinged(events)))
    provider = {"name": "anthropic", "type": "anthropic", "base_url": f"{fake_anthropic.url}/v1", "api_key": "sk-ant-x"}
    proxy = start_proxy({"providers": [provider], "routing": {"default_provider": "anthropic"}, "pricing_file": None})
    url = f"{proxy.url}/v1/messages"

    lines = _lines(url, MESSAGES, KEY)
    assert _comments(lines) == [": ping 0", ": ping 2", ": ping 4", f": ping {len(events) + 3 - 1}"]
    assert [line.removeprefix("event: ") for line in _after_each_comment(lines)] == [
        events[0]["type"], events[1]["type"], events[2]["type"], events[-1]["type"],
    ]

    replay = _lines(url, MESSAGES, KEY)
    assert _comments(replay) == []
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
    with client.messages.stream(**{k: v for k, v in MESSAGES.items() if k != "stream"}) as stream:
        assert stream.get_final_text() == "native answer here"
    assert len(fake_anthropic.calls("/messages")) == 1


# -- Responses, bridged over an OpenAI chat upstream --


def test_bridged_responses_stream_passes_comments_and_the_replay_has_none(start_proxy, fake_openai) -> None:
    fake_openai.script(Reply(chunks=_pinged(stream_chunks("gpt-4o-mini", "bridged answer"))))
    proxy = start_proxy(openai_config(fake_openai, provider={"responses": False}))
    body = {"model": "gpt-4o-mini", "input": "hi", "stream": True, "store": False}
    url = f"{proxy.url}/v1/responses"

    lines = _lines(url, body, KEY)
    assert _comments(lines) == [": ping 0", ": ping 2", ": ping 4", ": ping 7"]
    assert lines.index(": ping 0") < lines.index("event: response.created")

    replay = _lines(url, body, KEY)
    assert _comments(replay) == []
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0)
    done = [e for e in client.responses.create(**body) if e.type == "response.completed"]
    assert done[0].response.output_text == "bridged answer"
    assert len(fake_openai.calls("/chat/completions")) == 1


def test_upstream_comments_follow_sluices_own_keepalive_when_the_first_event_is_slow(start_proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(chunks=_pinged(stream_chunks("gpt-4o-mini", "slow answer")), gate=gate))
    proxy = start_proxy(openai_config(fake_openai, server={"stream_keepalive_seconds": 0.05}))
    lines: list[str] = []
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == ": keep-alive":
                gate.set()  # the upstream answers only once the head and a keep-alive are out
    comments = [line for line in _comments(lines) if line != ": keep-alive"]
    assert lines[0] == ": keep-alive" and comments == [": ping 0", ": ping 2", ": ping 4", ": ping 7"]
    assert lines.index(": ping 0") > max(i for i, line in enumerate(lines) if line == ": keep-alive")


# -- a stream of comments only, then a failure: nothing was committed --


def test_comments_then_a_failure_before_the_first_event_falls_back(start_proxy, fake_openai) -> None:
    dying = [Raw(b": ping\n\n"), Raw(b": ping\n\n"), *stream_chunks("gpt-4o", "never sent")]
    fake_openai.script(Reply(chunks=dying, cut_after=2), Reply(chunks=stream_chunks("gpt-4o-mini", "from the fallback")))
    models = [{"name": "smart", "targets": [{"provider": "openai", "model": "gpt-4o"}, {"provider": "openai", "model": "gpt-4o-mini"}]}]
    proxy = start_proxy(openai_config(fake_openai, models=models, retry={"max_attempts": 1}))

    lines = _lines(f"{proxy.url}/v1/chat/completions", {**CHAT, "model": "smart"})
    assert _comments(lines) == []  # the failed attempt's comments went with it
    texts = [json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in lines if line.startswith("data: {")]
    assert "".join(texts) == "from the fallback"
    calls = fake_openai.calls("/chat/completions")
    assert [call.json["model"] for call in calls] == ["gpt-4o", "gpt-4o-mini"]


# -- the framing and the flight, in process --


class _Body(StreamedBody):
    __slots__ = ("_pieces",)

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = iter(pieces)

    async def _piece(self) -> bytes:
        return next(self._pieces, b"")


async def _batches(pieces: list[bytes]) -> list[Any]:
    return [batch async for batch in _Body(pieces).sse_batches()]


def test_comments_come_in_their_place_between_batches_of_data() -> None:
    read = b"data: 1\n\n: ping\n\ndata: 2\n\ndata: 3\n\n:\n: two lines\n\ndata: 4\n\n"
    batches = asyncio.run(_batches([read, b"\r\n: split\r", b"\n\r\ndata: 5\n\n"]))
    assert batches == [[b"1"], Comment(b": ping\n\n"), [b"2", b"3"], Comment(b":\n: two lines\n\n"), [b"4"], Comment(b": split\n\n"), [b"5"]]
    assert [type(batch) for batch in batches[1::2]] == [Comment] * 3


def test_a_comment_over_the_event_limit_is_refused_like_an_event() -> None:
    with pytest.raises(UpstreamProtocolError):
        asyncio.run(_batches([b": " + b"x" * MAX_EVENT_BYTES, b"x"]))


def test_a_flight_of_comments_only_holds_the_latest_few() -> None:
    async def run() -> list[Any]:
        flight = Flight(True)
        for number in range(1000):
            flight.comment(Comment(b": %d\n\n" % number))
        flight.finish(Outcome())
        return [batch async for batch in flight.follow()]

    assert asyncio.run(run()) == [Comment(b": %d\n\n" % n) for n in range(1000 - KEPT_COMMENTS, 1000)]
