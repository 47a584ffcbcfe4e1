"""Token economics end to end: compression on the wire, trimming, usage and cost, key limits."""

from __future__ import annotations

import itertools
import json

import httpx
import openai
import pytest

from tests.conftest import openai_config

CODE = "```python\ndef f(x):\n    return  x   *  2\n\n\n\n```"
MESSY = "Please   summarise    this:   \n\n\n\n\nThe report   says   revenue grew.   \n" + CODE


def post(proxy, body, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=30, **kwargs)


def test_safe_compression_sends_fewer_tokens_and_keeps_code(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Be brief."}, {"role": "user", "content": MESSY}]}
    response = post(proxy, body)
    assert response.status_code == 200
    saved = int(response.headers["x-sluice-tokens-saved"])
    assert saved > 0
    sent = fake_openai.calls("/chat/completions")[0].json
    assert len(sent["messages"]) == 2, "the duplicate system message was dropped"
    user = sent["messages"][1]["content"]
    assert CODE in user, "the code block arrives byte for byte"
    assert "Please summarise this:" in user and "\n\n\n" not in user.split("```")[0]
    stats = httpx.get(f"{proxy.url}/stats").json()
    assert stats["tokens"]["saved_by_compression"] == saved


def test_compression_off_leaves_the_body_byte_identical(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    raw = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": MESSY}]}).encode()
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", content=raw,
        headers={"content-type": "application/json", "X-Sluice-Compression": "off"},
    )
    assert response.headers["x-sluice-tokens-saved"] == "0"
    assert fake_openai.calls("/chat/completions")[0].body == raw


def test_trim_history_keeps_system_and_tool_pairs(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, context_windows={"tiny-model": 300}))
    filler = "word " * 150
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "old question " + filler},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "old result " + filler * 2},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "the newest question"},
    ]
    response = post(proxy, {"model": "tiny-model", "messages": messages, "max_tokens": 50})
    assert response.status_code == 200, response.text
    assert response.headers["x-sluice-trimmed-messages"] == "2"
    sent = fake_openai.calls("/chat/completions")[0].json["messages"]
    # The tool call went with its result; the question it answered stays, the task then.
    assert [m["content"].rstrip() for m in sent] == [messages[i]["content"].rstrip() for i in (0, 1, 4, 5)]
    overflow = post(proxy, {"model": "tiny-model", "messages": [{"role": "user", "content": filler * 10}]})
    assert overflow.status_code == 400
    assert overflow.json()["error"]["code"] == "context_length_exceeded"
    assert len(fake_openai.calls("/chat/completions")) == 1, "an impossible prompt never reaches the upstream"


def test_usage_and_cost_add_up_over_hits_and_misses(start_proxy, fake_openai, tmp_path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("default: {input: 1.0, output: 2.0}\nmodels:\n  gpt-4o-mini: {input: 10.0, output: 20.0}\n")
    proxy = start_proxy(openai_config(fake_openai, pricing_file=str(prices), compression={"mode": "off"}))
    a = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}
    b = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "b"}], "stream": True}
    for body in (a, a, a, b):
        assert post(proxy, body).status_code == 200
    assert post(proxy, {**b, "stream": False}).headers["x-sluice-cache"] == "hit"
    stats = httpx.get(f"{proxy.url}/stats").json()
    one_call = (11 * 10.0 + 7 * 20.0) / 1_000_000
    assert stats["tokens"]["prompt"] == 22 and stats["tokens"]["completion"] == 14
    assert stats["tokens"]["saved_by_cache"] == 3 * 18
    assert stats["cost_usd"]["spent"] == pytest.approx(2 * one_call)
    assert stats["cost_usd"]["saved"] == pytest.approx(3 * one_call)
    assert stats["requests"]["total"] == 5 and stats["providers"]["openai"]["requests"] == 5
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'sluice_tokens_total{kind="prompt"} 22.0' in metrics
    assert 'sluice_cache_events_total{result="hit"} 3.0' in metrics


def _keyed(fake_openai, tmp_path, **limits):  # type: ignore[no-untyped-def]
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  gpt-4o-mini: {input: 100000.0, output: 100000.0}\n")
    key = {"name": "team-a", "key": "sk-team-a", **limits}
    return openai_config(fake_openai, cache={"enabled": False}, auth={"keys": [key]}, pricing_file=str(prices))


AUTH = {"Authorization": "Bearer sk-team-a"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def assert_limited(response: httpx.Response, code: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    assert int(response.headers["retry-after"]) >= 1 and int(response.headers["retry-after-ms"]) > 0


def test_rpm_limit(start_proxy, fake_openai, tmp_path) -> None:
    proxy = start_proxy(_keyed(fake_openai, tmp_path, rpm=2))
    assert [post(proxy, BODY, headers=AUTH).status_code for _ in range(2)] == [200, 200]
    assert_limited(post(proxy, BODY, headers=AUTH), "rate_limit_exceeded")
    assert len(fake_openai.requests) == 2


def test_tpm_limit(start_proxy, fake_openai, tmp_path) -> None:
    proxy = start_proxy(_keyed(fake_openai, tmp_path, tpm=30))
    assert [post(proxy, BODY, headers=AUTH).status_code for _ in range(2)] == [200, 200]
    assert_limited(post(proxy, BODY, headers=AUTH), "rate_limit_exceeded")


def test_daily_budget(start_proxy, fake_openai, tmp_path) -> None:
    proxy = start_proxy(_keyed(fake_openai, tmp_path, budget_usd_per_day=1.0))
    assert post(proxy, BODY, headers=AUTH).status_code == 200
    assert_limited(post(proxy, BODY, headers=AUTH), "budget_exceeded")
    stats = httpx.get(f"{proxy.url}/stats").json()
    assert stats["keys"]["team-a"]["requests"] == 2 and stats["keys"]["team-a"]["cost_usd"] == pytest.approx(1.8)


def test_trimming_keeps_its_cut_across_turns(start_proxy, fake_openai) -> None:
    """A chat that outgrows the window: the upstream prompt keeps its start from one request
    to the next (so the provider's prompt cache hits), jumping only now and then."""
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, context_windows={"tiny-model": 1200}))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    messages: list[dict] = [{"role": "system", "content": "You are terse."}]
    for i in range(60):
        messages.append({"role": "user", "content": f"question {i}: " + "tell me more " * 4})
        answer = client.chat.completions.create(model="tiny-model", messages=messages, max_tokens=100)  # type: ignore[arg-type]
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    sent = [call.json["messages"] for call in fake_openai.calls("/chat/completions")]
    trimmed = [prompt for prompt, full in zip(sent, range(2, 122, 2)) if len(prompt) < full]
    assert len(trimmed) >= 20
    kept_start = sum(1 for before, after in itertools.pairwise(trimmed) if after[: len(before)] == before)
    assert kept_start / (len(trimmed) - 1) >= 0.9
    assert all(prompt[0] == messages[0] for prompt in sent)


def test_an_agent_loop_keeps_its_cut_and_its_task_across_tool_rounds(start_proxy, fake_openai) -> None:
    """Tool rounds outgrow the window: the upstream prompt keeps its start across rounds and
    tasks, and the task being worked on is always in it, even once the cut has passed it."""
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, context_windows={"tiny-model": 2000}))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    messages: list[dict] = [{"role": "system", "content": "You are an agent."}]
    tasks: list[str] = []
    lengths: list[int] = []
    for task in range(10):
        tasks.append(f"Task {task}: find the files that mention lorem.")
        messages.append({"role": "user", "content": tasks[-1]})
        for step in range(4):
            call = {"id": f"call_{task}_{step}", "type": "function", "function": {"name": "grep", "arguments": "{}"}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": f"file_{step}.txt: " + "lorem " * 120})
            client.chat.completions.create(model="tiny-model", messages=messages, max_tokens=500)  # type: ignore[arg-type]
            lengths.append(len(messages))
    sent = [call.json["messages"] for call in fake_openai.calls("/chat/completions")]
    assert all(prompt[0] == messages[0] for prompt in sent)
    for prompt, task in zip(sent, (task for task in tasks for _ in range(4))):
        assert [m["content"] for m in prompt if m["role"] == "user"][-1] == task
    trimmed = [prompt for prompt, full in zip(sent, lengths) if len(prompt) < full]
    assert len(trimmed) >= 30
    kept_start = sum(1 for before, after in itertools.pairwise(trimmed) if after[: len(before)] == before)
    assert kept_start / (len(trimmed) - 1) >= 0.85, "turn by turn, nearly every request would move the start"
