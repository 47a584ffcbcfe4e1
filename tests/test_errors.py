"""CONTRACT §8: every error is OpenAI-shaped, with the right status and code; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import openai_config
from tests.fakes.server import Reply


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return error


@pytest.fixture
def proxy(start_proxy, fake_openai):  # type: ignore[no-untyped-def]
    config = openai_config(fake_openai, server={"max_body_bytes": 2048}, cache={"enabled": False})
    config["routing"] = {}
    config["models"] = [{"name": "fast", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]}]
    return start_proxy(config)


def chat(proxy, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{proxy.url}/v1/chat/completions", **kwargs)


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 5, "messages": []}', "model"),
        (b'{"model": "fast"}', "messages"),
        (b'{"model": "fast", "messages": "hi"}', "messages"),
        (b'{"model": "fast", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}', "max_tokens"),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
    ],
)
def test_malformed_or_mistyped_body_is_400(proxy, fake_openai, content: bytes, param: str | None) -> None:
    error = assert_error(chat(proxy, content=content), 400, "invalid_request")
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert not fake_openai.requests


def test_unknown_model_prefix_without_default_is_404(proxy) -> None:
    body = {"model": "nope/gpt-x", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(chat(proxy, json=body), 404, "model_not_found")


def test_oversized_body_is_413(proxy) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(chat(proxy, json=body), 413, "request_too_large")


def test_oversized_chunked_body_is_413(proxy) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "fast", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    assert_error(chat(proxy, content=chunks()), 413, "request_too_large")


def test_unknown_route_and_wrong_method(proxy) -> None:
    assert_error(httpx.get(f"{proxy.url}/v1/nothing"), 404, "not_found")
    assert_error(httpx.get(f"{proxy.url}/v1/chat/completions"), 405, "method_not_allowed")


def test_bad_header_values_are_400(proxy) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(chat(proxy, json=body, headers={"X-Sluice-Compression": "max"}), 400, "invalid_request")
    assert_error(chat(proxy, json=body, headers={"X-Sluice-Cache-TTL": "soon"}), 400, "invalid_request")


def test_upstream_client_error_passes_through_in_openai_shape(proxy, fake_openai) -> None:
    fake_openai.script(
        Reply(status=400, json={"error": {"message": "Invalid 'messages[0].content'", "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}})
    )
    error = assert_error(chat(proxy, json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]}), 400, "invalid_value")
    assert error["message"] == "Invalid 'messages[0].content'"
    assert len(fake_openai.requests) == 1, "a 400 is never retried"


def test_upstream_non_json_error_is_wrapped(proxy, fake_openai) -> None:
    fake_openai.script(*[Reply(status=502, body=b"<html>bad gateway</html>")] * 3)
    error = assert_error(chat(proxy, json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]}), 502, "upstream_error")
    assert "<html>" not in error["message"]


def test_server_keeps_serving_after_bad_input(proxy) -> None:
    for content in (b"\xff\xfe", b"[" * 1500, b'{"model": null}'):
        assert chat(proxy, content=content).status_code == 400
    body = {"model": "fast", "messages": [{"role": "user", "content": "still alive"}]}
    assert chat(proxy, json=body).json()["choices"][0]["message"]["content"] == "echo: still alive"
    assert "Traceback" not in proxy.logs()


def test_proxy_keys_401(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, auth={"keys": [{"name": "team-a", "key": "sk-team-a"}]}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(chat(proxy, json=body), 401, "invalid_api_key")
    assert_error(chat(proxy, json=body, headers={"Authorization": "Bearer sk-wrong"}), 401, "invalid_api_key")
    ok = chat(proxy, json=body, headers={"Authorization": "Bearer sk-team-a"})
    assert ok.status_code == 200
    sent = fake_openai.calls("/chat/completions")[0].headers["authorization"]
    assert sent == "Bearer sk-upstream-secret-123", "the proxy key is never forwarded upstream"
