"""Upstream networks as deployments have them, end to end: the real server, real upstreams, the openai SDK.

A real forward proxy (tinyproxy), TLS upstreams with a throwaway CA (one
that requires a client certificate), an IPv6 loopback upstream, a gzip
answer, a full pool, an upstream that never finishes its TLS handshake, and
answers that outlast ``timeout.total`` or carry an oversized head. Each is
tried on both upstream clients where both apply (``http2: true`` picks the
HTTP/2 client for ``https://``, ``false`` Sluice's HTTP/1.1 client).
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import openai_config
from tests.fakes.openai import FakeOpenAI, completion
from tests.fakes.server import Reply
from tests.forward_proxy import Tinyproxy, tinyproxy, tinyproxy_with_auth  # noqa: F401
from tests.test_http2 import HypercornFakeOpenAI, certificates  # noqa: F401

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def tls_upstream(certificates: dict[str, Path]) -> Iterator[HypercornFakeOpenAI]:  # noqa: F811
    server = HypercornFakeOpenAI(certificates).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_upstream(certificates: dict[str, Path]) -> Iterator[HypercornFakeOpenAI]:  # noqa: F811
    server = HypercornFakeOpenAI(certificates, client_ca=certificates["ca"]).start()
    yield server
    server.stop()


@pytest.fixture
def proxy_log(tinyproxy: Tinyproxy) -> Tinyproxy:  # noqa: F811
    tinyproxy.clear()
    return tinyproxy


def _config(upstream: FakeOpenAI, provider: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    sections = {"cache": {"enabled": False}, "dedup": {"enabled": False}, **sections}
    return openai_config(upstream, provider=provider or {}, **sections)


def _ask(proxy: Any) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    return client.chat.completions.create(**CHAT)


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


# -- forward proxies --


@pytest.mark.parametrize("http2", [True, False])
def test_https_goes_through_the_environment_proxy_in_a_connect_tunnel(
    start_proxy, tls_upstream, certificates, proxy_log, http2  # noqa: F811
) -> None:
    config = _config(tls_upstream, {"http2": http2, "tls": {"ca_file": str(certificates["ca"])}})
    proxy = start_proxy(config, env={"HTTPS_PROXY": proxy_log.url})
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    assert proxy_log.requests() == [f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"]


def test_no_proxy_bypasses_the_environment_proxy(start_proxy, tls_upstream, certificates, proxy_log) -> None:  # noqa: F811
    config = _config(tls_upstream, {"tls": {"ca_file": str(certificates["ca"])}})
    proxy = start_proxy(config, env={"https_proxy": proxy_log.url, "no_proxy": "example.com, .internal,127.0.0.0/8"})
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    assert proxy_log.requests() == []


def test_a_providers_proxy_overrides_the_environment(start_proxy, tls_upstream, certificates, proxy_log) -> None:  # noqa: F811
    config = _config(tls_upstream, {"proxy": proxy_log.url, "tls": {"ca_file": str(certificates["ca"])}})
    proxy = start_proxy(config, env={"HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"})
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    assert proxy_log.requests() == [f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"]


@pytest.mark.parametrize("http2", [True, False])
def test_a_proxy_that_requires_credentials_gets_them_from_the_url_and_they_never_leak(
    start_proxy, tls_upstream, certificates, tinyproxy_with_auth, http2  # noqa: F811
) -> None:
    tls = {"ca_file": str(certificates["ca"])}
    url = tinyproxy_with_auth.url.replace("http://", "http://sluice:s3cret@")
    proxy = start_proxy(_config(tls_upstream, {"http2": http2, "proxy": url, "tls": tls}))
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    refused = start_proxy(_config(tls_upstream, {"http2": http2, "proxy": tinyproxy_with_auth.url, "tls": tls}, retry={"max_attempts": 1}))
    response = httpx.post(f"{refused.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 502 and "s3cret" not in response.text
    assert "s3cret" not in proxy.logs() + refused.logs()


def test_plain_http_goes_through_the_proxy_in_absolute_form(start_proxy, fake_openai, proxy_log) -> None:  # noqa: F811
    proxy = start_proxy(_config(fake_openai), env={"http_proxy": proxy_log.url})
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    target = f"POST http://127.0.0.1:{fake_openai.port}/v1/chat/completions HTTP/1.1"
    assert proxy_log.requests() == [target, target]
    assert "tinyproxy" in fake_openai.calls("/chat/completions")[0].headers["via"]


def test_plain_http_through_a_proxy_that_requires_credentials(start_proxy, fake_openai, tinyproxy_with_auth) -> None:  # noqa: F811
    url = tinyproxy_with_auth.url.replace("http://", "http://sluice:s3cret@")
    proxy = start_proxy(_config(fake_openai, {"proxy": url}))
    assert _ask(proxy).choices[0].message.content == "echo: hello"
    assert "proxy-authorization" not in fake_openai.calls("/chat/completions")[0].headers


# -- TLS --


@pytest.mark.parametrize("http2", [True, False])
def test_ca_file_adds_trust_and_without_it_the_upstream_is_not_trusted(
    start_proxy, tls_upstream, certificates, http2  # noqa: F811
) -> None:
    trusted = start_proxy(_config(tls_upstream, {"http2": http2, "tls": {"ca_file": str(certificates["ca"])}}))
    assert _ask(trusted).choices[0].message.content == "echo: hello"
    untrusted = start_proxy(_config(tls_upstream, {"http2": http2}, retry={"max_attempts": 1}))
    response = httpx.post(f"{untrusted.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 502 and "not trusted" in _error(response)["message"]


@pytest.mark.parametrize("http2", [True, False])
def test_verify_false_accepts_an_untrusted_certificate(start_proxy, tls_upstream, http2) -> None:
    proxy = start_proxy(_config(tls_upstream, {"http2": http2, "tls": {"verify": False}}))
    assert _ask(proxy).choices[0].message.content == "echo: hello"


@pytest.mark.parametrize("http2", [True, False])
def test_client_certificate_for_an_upstream_that_requires_one(
    start_proxy, mtls_upstream, certificates, http2  # noqa: F811
) -> None:
    tls = {"ca_file": str(certificates["ca"])}
    without = start_proxy(_config(mtls_upstream, {"http2": http2, "tls": tls}, retry={"max_attempts": 1}))
    assert httpx.post(f"{without.url}/v1/chat/completions", json=CHAT).status_code == 502
    client_cert = {"cert_file": str(certificates["client_cert"]), "key_file": str(certificates["client_key"])}
    proxy = start_proxy(_config(mtls_upstream, {"http2": http2, "tls": {**tls, **client_cert}}))
    assert _ask(proxy).choices[0].message.content == "echo: hello"


# -- addresses and answers --


def test_ipv6_loopback_upstream(start_proxy) -> None:
    try:
        upstream = FakeOpenAI(host="::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        proxy = start_proxy(_config(upstream))
        assert upstream.url.startswith("http://[::1]:")
        assert _ask(proxy).choices[0].message.content == "echo: hello"
        assert upstream.calls("/chat/completions")[0].headers["host"] == f"[::1]:{upstream.port}"
    finally:
        upstream.stop()


def test_a_gzip_answer_sent_unasked_is_decoded(start_proxy, fake_openai) -> None:
    body = gzip.compress(orjson.dumps(completion("gpt-4o-mini", "squeezed")))
    fake_openai.script(Reply(body=body, headers={"content-encoding": "gzip"}))
    proxy = start_proxy(_config(fake_openai))
    assert _ask(proxy).choices[0].message.content == "squeezed"
    assert "accept-encoding" not in fake_openai.calls("/chat/completions")[0].headers


def test_an_oversized_answer_head_is_a_clean_502(start_proxy, fake_openai) -> None:
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "x"), headers={"x-padding": "a" * 70_000}))
    proxy = start_proxy(_config(fake_openai, retry={"max_attempts": 1}))
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert _error(response)["code"] == "upstream_error" and "head too large" in _error(response)["message"]


# -- timeouts --


def test_a_full_pool_answers_503_upstream_busy_and_spares_the_breaker(start_proxy, fake_openai) -> None:
    fake_openai.script(Reply(hang=True))
    config = _config(
        fake_openai,
        {"max_connections": 1, "timeout": {"pool": 0.2}},
        breaker={"failure_threshold": 1, "reset_timeout_seconds": 30},
    )
    proxy = start_proxy(config)
    hung = threading.Thread(target=lambda: httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30))
    hung.start()
    _until(lambda: len(fake_openai.calls("/chat/completions")) == 1)  # the one connection is taken
    for _ in range(2):
        response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30)
        assert response.status_code == 503
        assert _error(response)["code"] == "upstream_busy" and "timeout.pool" in _error(response)["message"]
        assert response.headers["retry-after"] == "1" and response.headers["retry-after-ms"] == "1000"
    assert httpx.get(f"{proxy.url}/stats").json()["breakers"] == {"openai/gpt-4o-mini": "closed"}
    proxy.stop()
    hung.join(10)


def test_a_busy_target_hands_the_request_to_the_next_target_of_an_alias(start_proxy, fake_openai) -> None:
    backup = FakeOpenAI().start()
    try:
        fake_openai.script(Reply(hang=True))
        config = _config(fake_openai, {"max_connections": 1, "timeout": {"pool": 0.2}})
        config["providers"].append({"name": "backup", "type": "openai", "base_url": f"{backup.url}/v1", "api_key": "k2"})
        config["models"] = [{"name": "smart", "targets": [{"provider": "openai", "model": "gpt-4o"}, {"provider": "backup", "model": "gpt-4o"}]}]
        proxy = start_proxy(config)
        hung = threading.Thread(target=lambda: httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30))
        hung.start()
        _until(lambda: len(fake_openai.calls("/chat/completions")) == 1)
        response = httpx.post(f"{proxy.url}/v1/chat/completions", json={**CHAT, "model": "smart"}, timeout=30)
        assert response.status_code == 200 and response.headers["x-sluice-provider"] == "backup"
        proxy.stop()
        hung.join(10)
    finally:
        backup.stop()


@pytest.mark.parametrize("http2", [True, False])
def test_a_connect_timeout_is_a_504_that_says_connect(start_proxy, http2) -> None:
    silent = _SilentServer()  # accepts TCP, never answers the TLS handshake
    try:
        provider = {"base_url": f"https://127.0.0.1:{silent.port}/v1", "http2": http2, "timeout": {"connect": 0.2}}
        config = {
            "providers": [{"name": "openai", "type": "openai", "api_key": "sk-upstream", **provider}],
            "routing": {"default_provider": "openai"},
            "retry": {"max_attempts": 1},
            "pricing_file": None,
        }
        proxy = start_proxy(config)
        response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30)
        assert response.status_code == 504
        assert _error(response)["code"] == "upstream_timeout" and "connect timed out" in _error(response)["message"]
    finally:
        silent.close()


def test_timeout_total_bounds_an_answer_that_keeps_trickling(start_proxy, fake_openai) -> None:
    # Every piece comes well within timeout.read, but the whole answer never does.
    fake_openai.script(Reply(chunks=[{"piece": n} for n in range(200)], chunk_delay=0.05))
    config = _config(fake_openai, {"timeout": {"read": 5, "total": 0.5}}, retry={"max_attempts": 1})
    proxy = start_proxy(config)
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 504
    assert _error(response)["code"] == "upstream_timeout" and "timeout.total" in _error(response)["message"]
    assert fake_openai.disconnected.wait(5)


# -- OpenAI-compatible servers --


def test_stream_usage_false_leaves_stream_options_alone_and_usage_is_estimated(start_proxy, fake_openai) -> None:
    proxy = start_proxy(_config(fake_openai, {"stream_usage": False}))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**CHAT, stream=True)
        if chunk.choices
    )
    assert text == "echo: hello"
    assert "stream_options" not in fake_openai.calls("/chat/completions")[0].json
    [line] = proxy.wait_for_log(lambda line: line.get("path") == "/v1/chat/completions")
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


def _until(condition: Any) -> None:
    """Until a condition about the fakes' recorded state holds (state, not time, is awaited)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


class _SilentServer:
    """A TCP listener that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


# -- lossless stream replay --


def _rich_stream() -> list[dict[str, Any]]:
    """A thinking model's stream with citations, audio and a legacy function call, as one choice."""
    from tests.fakes.openai import chunk, usage

    cid, model = "chatcmpl-rich", "gpt-4o-mini"
    deltas = [
        {"role": "assistant", "content": "", "reasoning_content": "Let me "},
        {"reasoning_content": "think."},
        {"content": "Paris", "annotations": [{"type": "url_citation", "url_citation": {"url": "https://a.example", "title": "A", "start_index": 0, "end_index": 5}}]},
        {"content": " it is.", "annotations": [{"type": "url_citation", "url_citation": {"url": "https://b.example", "title": "B", "start_index": 6, "end_index": 12}}]},
        {"audio": {"id": "audio_1", "data": "AAAA", "transcript": "Paris"}},
        {"audio": {"id": "audio_1", "data": "BBBB", "transcript": " it is."}},
        {"function_call": {"name": "lookup", "arguments": '{"q":'}},
        {"function_call": {"arguments": '"Paris"}'}},
        {"vendor_extension": {"score": 1}},
    ]
    chunks = [chunk(cid, model, delta) for delta in deltas] + [chunk(cid, model, {}, "stop")]
    return chunks + [{**chunk(cid, model, {}), "choices": [], "usage": usage()}]


EXPECTED_MESSAGE = {
    "content": "Paris it is.",
    "reasoning_content": "Let me think.",
    "annotations": [
        {"type": "url_citation", "url_citation": {"url": "https://a.example", "title": "A", "start_index": 0, "end_index": 5}},
        {"type": "url_citation", "url_citation": {"url": "https://b.example", "title": "B", "start_index": 6, "end_index": 12}},
    ],
    "audio": {"id": "audio_1", "data": "AAAABBBB", "transcript": "Paris it is."},
    "function_call": {"name": "lookup", "arguments": '{"q":"Paris"}'},
    "vendor_extension": {"score": 1},
}


def _folded(stream: Any) -> dict[str, Any]:
    """What an SDK stream's deltas add up to, field by field (the SDK keeps unknown fields as extras)."""
    from proxy.completions import StreamAssembler

    assembler = StreamAssembler()
    for item in stream:
        assembler.add(item.model_dump(exclude_unset=True))
    return assembler.completion().data["choices"][0]["message"]


def test_a_cached_stream_replays_every_field_as_json_and_as_sse(start_proxy, fake_openai) -> None:
    fake_openai.script(Reply(chunks=_rich_stream()))
    proxy = start_proxy(openai_config(fake_openai, dedup={"enabled": False}))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)

    live = _folded(client.chat.completions.create(**CHAT, stream=True))
    raw = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert raw.headers["x-sluice-cache"] == "hit"
    replayed = _folded(raw.parse())
    as_json = client.chat.completions.with_raw_response.create(**CHAT)
    assert as_json.headers["x-sluice-cache"] == "hit"
    message = orjson.loads(as_json.content)["choices"][0]["message"]

    for name, value in EXPECTED_MESSAGE.items():
        assert live[name] == value, name
        assert replayed[name] == value, name
        assert message[name] == value, name
    assert len(fake_openai.calls("/chat/completions")) == 1


# -- headers between client and an OpenAI upstream --


def test_client_openai_headers_are_read_in_one_pass() -> None:
    from proxy.requests import read_headers

    scope = {"headers": [(b"openai-organization", b"org-1"), (b"openai-beta", b"assistants=v2"), (b"x-other", b"1")]}
    assert read_headers(scope).passed == {"openai-organization": "org-1", "openai-beta": "assistants=v2"}
    assert read_headers({"headers": []}).passed is None


async def test_openai_headers_go_upstream_and_request_id_and_rate_limits_come_back(fake_openai) -> None:
    from proxy.config import ProviderConfig
    from proxy.http import upstream_client
    from proxy.providers.base import Call
    from proxy.providers.openai import OpenAIProvider

    passed = {"x-request-id": "req_up_1", "x-ratelimit-remaining-requests": "99", "x-ratelimit-limit-tokens": "1000"}
    fake_openai.script(Reply(json=completion("gpt-4o-mini", "hi"), headers={**passed, "x-internal": "no"}))
    fake_openai.script(Reply(chunks=_rich_stream(), headers=passed))
    config = ProviderConfig(name="openai", type="openai", base_url=f"{fake_openai.url}/v1", pass_client_key=True)
    provider = OpenAIProvider(config, upstream_client(config))
    sent = {"openai-organization": "org-1", "openai-project": "proj-1", "openai-beta": "assistants=v2"}
    own = "Bearer sk-callers-own"  # organization and project go only with the caller's own key
    try:
        answer = await provider.chat(Call("gpt-4o-mini", dict(CHAT), authorization=own, headers={**sent, "anthropic-beta": "x"}))
        assert answer.upstream_headers == passed
        stream = await provider.chat_stream(Call("gpt-4o-mini", {**CHAT, "stream": True}, authorization=own, headers=sent))
        assert stream.upstream_headers == passed
        await stream.aclose()
    finally:
        await provider.aclose()
    for recorded in fake_openai.calls("/chat/completions"):
        assert {name: recorded.headers.get(name) for name in sent} == sent
        assert "anthropic-beta" not in recorded.headers


async def test_the_pool_gauge_counts_requests_waiting_for_a_connection(fake_openai) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.config import ProviderConfig, Timeout
    from proxy.http import upstream_client
    from proxy.pool_waiting import PoolWaitingCollector, pool_waiting
    from proxy.providers.openai import OpenAIProvider

    fake_openai.script(Reply(hang=True))
    config = ProviderConfig(
        name="openai", type="openai", base_url=f"{fake_openai.url}/v1", max_connections=1, timeout=Timeout(pool=30)
    )
    providers = {"openai": OpenAIProvider(config, upstream_client(config))}
    registry = CollectorRegistry()
    registry.register(PoolWaitingCollector(providers))
    client = providers["openai"].client
    hung = asyncio.create_task(client.request("POST", f"{fake_openai.url}/v1/chat/completions", {}, b"{}"))
    waiting = [asyncio.create_task(client.request("GET", f"{fake_openai.url}/v1/models", {})) for _ in range(2)]
    try:
        async with asyncio.timeout(5):
            while pool_waiting(providers) != {"openai": 2}:
                await asyncio.sleep(0.01)
        assert 'sluice_upstream_pool_waiting{provider="openai"} 2.0' in generate_latest(registry).decode()
    finally:
        for task in (hung, *waiting):
            task.cancel()
        await asyncio.gather(hung, *waiting, return_exceptions=True)
        await providers["openai"].aclose()
    assert pool_waiting(providers) == {"openai": 0}
