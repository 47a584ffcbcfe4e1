"""Slow first tokens (CONTRACT §6): the head and SSE comments go out while the upstream is silent."""

from __future__ import annotations

import json
import threading

import httpx
import openai

from tests.conftest import openai_config
from tests.fakes.openai import stream_chunks
from tests.fakes.server import Reply

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "think hard"}], "stream": True}


def _config(fake, **sections):  # type: ignore[no-untyped-def]
    return openai_config(fake, server={"stream_keepalive_seconds": 0.05}, **sections)


def test_the_sdk_gets_the_head_before_the_first_token_and_parses_the_stream(start_proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "a considered answer"), gate=gate))
    proxy = start_proxy(_config(fake_openai))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0)
    try:
        stream = client.chat.completions.create(**BODY)  # returns once the head is in: the upstream is still gated
        assert not gate.is_set()
    finally:
        gate.set()
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "a considered answer"


def test_comments_flow_while_retries_happen_behind_them(start_proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(status=503, json={"error": {"message": "busy"}}, gate=gate))
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "after a retry")))
    proxy = start_proxy(_config(fake_openai))
    lines: list[str] = []
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=BODY, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert int(response.headers["x-sluice-attempts"]) >= 1
        for line in response.iter_lines():
            lines.append(line)
            if line == ": keep-alive" and not gate.is_set():
                gate.set()  # the first comment came while the upstream had not answered
    assert lines[0] == ": keep-alive"
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "after a retry"
    assert "data: [DONE]" in lines
    assert len(fake_openai.calls("/v1/chat/completions")) == 2


def test_a_final_failure_after_comments_ends_the_stream_with_an_error_event(start_proxy, fake_openai) -> None:
    gate = threading.Event()
    fake_openai.script(Reply(status=400, json={"error": {"message": "bad things", "type": "invalid_request_error"}}, gate=gate))
    proxy = start_proxy(_config(fake_openai))
    lines: list[str] = []
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=BODY, timeout=30) as response:
        assert response.status_code == 200  # the head went out before the upstream answered
        for line in response.iter_lines():
            lines.append(line)
            if line == ": keep-alive":
                gate.set()
    error = json.loads(next(line for line in lines if line.startswith("data: {"))[6:])
    assert error["error"]["message"] == "bad things"


def test_a_fast_stream_has_no_comment(start_proxy, fake_openai) -> None:
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "quick")))
    proxy = start_proxy(openai_config(fake_openai))
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=BODY, timeout=30) as response:
        assert not any(line.startswith(":") for line in response.iter_lines())
