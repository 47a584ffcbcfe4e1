"""Retries, backoff with Retry-After, timeouts, breakers and fallback — against scripted faults."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import openai_config
from tests.fakes.openai import FakeOpenAI, stream_chunks
from tests.fakes.server import Reply

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def err(status: int, message: str = "upstream trouble", **headers: str) -> Reply:
    return Reply(status=status, json={"error": {"message": message, "type": "server_error", "param": None, "code": None}}, headers=headers)


def post(proxy, body=BODY, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=30, **kwargs)


@pytest.fixture
def proxy(start_proxy, fake_openai):  # type: ignore[no-untyped-def]
    return start_proxy(
        openai_config(
            fake_openai,
            cache={"enabled": False},
            provider={"timeout": {"connect": 1, "read": 0.5}},
            breaker={"failure_threshold": 100, "reset_timeout_seconds": 30},
        )
    )


def test_503_503_200_succeeds_with_three_attempts(proxy, fake_openai) -> None:
    fake_openai.script(err(503), err(503))
    response = post(proxy)
    assert response.status_code == 200
    assert response.headers["x-sluice-attempts"] == "3"
    assert len(fake_openai.calls("/chat/completions")) == 3


def test_retry_after_is_honoured(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, retry={"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5000}))
    fake_openai.script(err(429, "slow down", **{"Retry-After": "1"}))
    post(proxy)
    first, second = fake_openai.calls("/chat/completions")
    assert second.received_at - first.received_at >= 1.0


def test_400_is_not_retried(proxy, fake_openai) -> None:
    fake_openai.script(err(400, "bad request"))
    response = post(proxy)
    assert response.status_code == 400 and response.headers["x-sluice-attempts"] == "1"


def test_exhausted_5xx_is_502_with_the_last_upstream_message(proxy, fake_openai) -> None:
    fake_openai.script(err(500, "first"), err(502, "second"), err(503, "last words"))
    response = post(proxy)
    assert response.status_code == 502
    assert response.json()["error"] == {"message": "last words", "type": "api_error", "param": None, "code": "upstream_error"}


def test_connection_refused_is_502(start_proxy) -> None:
    from tests.fakes.server import free_port

    dead = {"name": "openai", "type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "k"}
    proxy = start_proxy({"providers": [dead], "routing": {"default_provider": "openai"}, "retry": {"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5}, "pricing_file": None})
    response = post(proxy)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    assert response.headers["x-sluice-attempts"] == "2"


def test_connection_reset_mid_body_is_retried(proxy, fake_openai) -> None:
    fake_openai.script(Reply(reset=True))
    response = post(proxy)
    assert response.status_code == 200 and response.headers["x-sluice-attempts"] == "2"


def test_hang_past_read_timeout_is_504(proxy, fake_openai) -> None:
    fake_openai.script(Reply(hang=True), Reply(hang=True), Reply(hang=True))
    response = post(proxy)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert response.headers["x-sluice-attempts"] == "3"


def test_break_mid_stream_sends_error_event_with_one_upstream_call(proxy, fake_openai) -> None:
    fake_openai.script(Reply(chunks=stream_chunks("gpt-4o-mini", "a b c d e"), cut_after=3))
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json={**BODY, "stream": True}) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_error" and error["message"]
    assert "[DONE]" not in events
    assert len(fake_openai.calls("/chat/completions")) == 1


def test_breaker_opens_fails_fast_half_opens_and_closes(start_proxy, fake_openai) -> None:
    proxy = start_proxy(
        openai_config(
            fake_openai,
            cache={"enabled": False},
            retry={"max_attempts": 1},
            breaker={"failure_threshold": 3, "reset_timeout_seconds": 1},
        )
    )
    fake_openai.script(err(500), err(500), err(500))
    assert [post(proxy).status_code for _ in range(3)] == [502, 502, 502]
    assert httpx.get(f"{proxy.url}/stats").json()["breakers"] == {"openai/gpt-4o-mini": "open"}
    calls = len(fake_openai.requests)
    opened = time.monotonic()
    fast = post(proxy)
    assert fast.status_code == 503 and fast.json()["error"]["code"] == "circuit_open"
    assert 1 <= int(fast.headers["retry-after"]) and int(fast.headers["retry-after-ms"]) <= 1000
    assert len(fake_openai.requests) == calls, "an open breaker does not touch the upstream"
    assert "openai/gpt-4o-mini" in httpx.get(f"{proxy.url}/readyz").json()["breakers"]
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'sluice_breaker_state{provider="openai",target="openai/gpt-4o-mini"} 2.0' in metrics
    while time.monotonic() - opened < 1.05:  # the reset timeout is the behaviour under test
        time.sleep(0.05)
    assert post(proxy).status_code == 200, "the half-open trial goes through"
    assert httpx.get(f"{proxy.url}/stats").json()["breakers"] == {"openai/gpt-4o-mini": "closed"}


@pytest.mark.parametrize(("retry_on_status", "attempts"), [([503], "2"), ([500], "1")])
def test_529_overloaded_is_retried_whenever_503_is(start_proxy, fake_openai, retry_on_status: list[int], attempts: str) -> None:
    retry = {"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5, "retry_on_status": retry_on_status}
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, retry=retry))
    fake_openai.script(err(529, "Overloaded"))
    response = post(proxy)
    assert response.headers["x-sluice-attempts"] == attempts
    assert response.status_code == (200 if attempts == "2" else 529)  # passed through, as CONTRACT §9 says


def test_529s_open_the_breaker(start_proxy, fake_openai) -> None:
    proxy = start_proxy(
        openai_config(fake_openai, cache={"enabled": False}, retry={"max_attempts": 1}, breaker={"failure_threshold": 2})
    )
    fake_openai.script(err(529, "Overloaded"), err(529, "Overloaded"))
    assert [post(proxy).status_code for _ in range(2)] == [529, 529]
    calls = len(fake_openai.requests)
    assert post(proxy).json()["error"]["code"] == "circuit_open"
    assert len(fake_openai.requests) == calls


def test_client_errors_do_not_open_the_breaker(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, breaker={"failure_threshold": 2}))
    fake_openai.script(err(400), err(400), err(400))
    assert [post(proxy).status_code for _ in range(3)] == [400, 400, 400]
    assert post(proxy).status_code == 200


def test_alias_fails_over_to_the_second_provider(start_proxy, fake_openai) -> None:
    backup = FakeOpenAI().start()
    try:
        config = openai_config(fake_openai, cache={"enabled": False}, retry={"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5})
        config["providers"].append({"name": "backup", "type": "openai", "base_url": f"{backup.url}/v1", "api_key": "k2"})
        config["models"] = [
            {"name": "smart", "targets": [{"provider": "openai", "model": "gpt-4o"}, {"provider": "backup", "model": "gpt-4o-mini"}]}
        ]
        proxy = start_proxy(config)
        fake_openai.script(err(503), err(503))
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="smart", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-sluice-provider"] == "backup"
        assert raw.headers["x-sluice-attempts"] == "3"
        assert raw.parse().choices[0].message.content == "echo: hi"
        assert backup.calls("/chat/completions")[0].json["model"] == "gpt-4o-mini"
        assert httpx.get(f"{proxy.url}/stats").json()["fallbacks"] == 1
    finally:
        backup.stop()


def test_sdk_honours_sluice_retry_after(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}, retry={"max_attempts": 1}, breaker={"failure_threshold": 1, "reset_timeout_seconds": 60}))
    fake_openai.script(err(500))
    post(proxy)
    response = post(proxy)
    assert response.status_code == 503
    assert float(response.headers["retry-after-ms"]) > 0 and int(response.headers["retry-after"]) >= 1
