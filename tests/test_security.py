"""Security end to end (CONTRACT §2, §4, §6 "Credentials" and "Exposure", §7, §8): the real
server on loopback, the fakes as upstreams, the official SDK as the client.

Credentials stay with their provider, exposure needs a decision, keys have
allow-lists, nothing a client sends grows the server without bound, and a
failure is attributed to the provider that failed it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import openai_config
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import Reply
from tests.proxy_process import REPO

CLIENT_KEY = "sk-callers-own-openai-key"
CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "hi"}]


def three_providers(fake_openai: FakeOpenAI, fake_gemini: FakeGemini, fake_ollama: FakeOllama, **sections: Any) -> dict[str, Any]:
    """The shipped layout: openai passes the caller's key through, gemini has no key, ollama is local."""
    config: dict[str, Any] = {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": f"{fake_openai.url}/v1", "pass_client_key": True},
            {"name": "gemini", "type": "gemini", "base_url": f"{fake_gemini.url}/v1beta"},
            {"name": "ollama", "type": "ollama", "base_url": fake_ollama.url},
        ],
        "models": [
            {
                "name": "fast",
                "targets": [{"provider": "gemini", "model": "gemini-2.5-flash"}, {"provider": "openai", "model": "gpt-4o-mini"}],
            }
        ],
        "routing": {"default_provider": "openai"},
        "retry": {"max_attempts": 1},
        "cache": {"enabled": False},
        "pricing_file": None,
    }
    config.update(sections)
    return config


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def headers_seen(fake: Any) -> str:
    return repr([call.headers for call in fake.requests])


# -- credentials ------------------------------------------------------------------------------


def test_the_callers_key_reaches_only_pass_through_providers(start_proxy, fake_openai, fake_gemini, fake_ollama) -> None:
    fake_gemini.script(Reply(status=503, json={"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}))
    proxy = start_proxy(three_providers(fake_openai, fake_gemini, fake_ollama))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=CLIENT_KEY, max_retries=0)

    answer = client.chat.completions.with_raw_response.create(model="fast", messages=ASK)
    assert answer.headers["x-sluice-provider"] == "openai", "gemini failed, openai answered"
    assert fake_openai.calls("/chat/completions")[0].headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert len(fake_gemini.calls(":generateContent")) == 1
    assert "x-goog-api-key" not in fake_gemini.requests[0].headers
    client.chat.completions.create(model="ollama/llama3.1", messages=ASK)

    ids = [model.id for model in client.models.list()]
    assert "fast" in ids and any(i.startswith("openai/") for i in ids)
    assert fake_openai.calls("/models")[0].headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert CLIENT_KEY not in headers_seen(fake_gemini) + headers_seen(fake_ollama)
    assert CLIENT_KEY not in proxy.logs()


def test_a_proxy_key_is_never_forwarded_and_may_arrive_as_x_api_key(start_proxy, fake_openai) -> None:
    config = openai_config(fake_openai, provider={"api_key": "", "pass_client_key": True}, auth={"keys": [{"name": "team", "key": "sk-proxy-team"}]})
    proxy = start_proxy(config)
    body = {"model": "gpt-4o-mini", "messages": ASK}
    assert httpx.post(f"{proxy.url}{CHAT}", json=body, headers={"x-api-key": "sk-proxy-team"}).status_code == 200
    assert httpx.post(f"{proxy.url}{CHAT}", json=body, headers={"Authorization": "bearer sk-proxy-team"}).status_code == 200
    refused = httpx.post(f"{proxy.url}{CHAT}", json=body, headers={"x-api-key": "sk-wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert all("authorization" not in call.headers for call in fake_openai.requests), "a proxy key is not an upstream credential"


@pytest.mark.parametrize("callers_key", [False, True])
def test_organization_and_project_go_upstream_only_with_the_callers_own_key(start_proxy, fake_openai, callers_key) -> None:
    """They pick which organization or project a key bills: with Sluice's own ``api_key`` a caller
    could bill any that key can reach. ``OpenAI-Beta`` selects API behaviour and always goes."""
    provider = {"api_key": "", "pass_client_key": True} if callers_key else {}
    proxy = start_proxy(openai_config(fake_openai, provider=provider, cache={"enabled": False}))
    client = openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key=CLIENT_KEY, organization="org-caller", project="proj-caller", max_retries=0
    )
    beta = {"OpenAI-Beta": "assistants=v2"}
    client.chat.completions.create(model="gpt-4o-mini", messages=ASK, extra_headers=beta)
    client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True, extra_headers=beta).close()
    client.responses.create(model="gpt-4o-mini", input="hi", extra_headers=beta)
    calls = fake_openai.calls("/chat/completions") + fake_openai.calls("/responses")
    assert len(calls) == 3
    for call in calls:
        account = (call.headers.get("openai-organization"), call.headers.get("openai-project"))
        assert account == (("org-caller", "proj-caller") if callers_key else (None, None))
        assert call.headers["openai-beta"] == "assistants=v2"
        assert call.headers["authorization"] == (f"Bearer {CLIENT_KEY}" if callers_key else "Bearer sk-upstream-secret-123")


def test_an_alias_over_two_pass_through_providers_is_a_config_error(tmp_path, fake_openai, fake_gemini, fake_ollama) -> None:
    config = three_providers(fake_openai, fake_gemini, fake_ollama)
    config["providers"][1]["pass_client_key"] = True
    result = sluice("check-config", write(tmp_path, config))
    assert result.returncode == 2
    assert re.search(r"^models\[0\]\.targets: alias 'fast' .*gemini, openai", result.stderr, re.M), result.stderr
    served = sluice("serve", "--config", write(tmp_path, config), "--port", "1")
    assert served.returncode == 2 and "'fast'" in served.stderr


# -- exposure ---------------------------------------------------------------------------------


def test_an_exposed_host_with_server_side_keys_and_no_proxy_keys_refuses_to_start(tmp_path, start_proxy, fake_openai) -> None:
    path = write(tmp_path, openai_config(fake_openai))
    served = sluice("serve", "--config", path, "--host", "0.0.0.0", "--port", "1")
    assert served.returncode == 2 and served.stderr.startswith("auth.keys:"), served.stderr
    assert "sk-upstream-secret-123" not in served.stderr
    checked = sluice("check-config", path)
    assert checked.returncode == 0, "on 127.0.0.1 the same file is fine"
    exposed = openai_config(fake_openai, server={"host": "0.0.0.0"})
    checked = sluice("check-config", write(tmp_path, exposed))
    assert checked.returncode == 2 and "auth.keys" in checked.stderr

    for auth in ({"allow_anonymous": True}, {"keys": [{"name": "a", "key": "sk-a"}]}):
        proxy = start_proxy(openai_config(fake_openai, auth=auth), args=["--host", "0.0.0.0"])
        assert httpx.get(f"{proxy.url}/healthz").status_code == 200


def local_address() -> str | None:
    """A non-loopback address of this machine, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_without_an_admin_key_admin_endpoints_answer_only_loopback(start_proxy, fake_openai) -> None:
    address = local_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    proxy = start_proxy(openai_config(fake_openai, auth={"allow_anonymous": True}), args=["--host", "0.0.0.0"])
    remote = f"http://{address}:{proxy.port}"
    for method, path in (("GET", "/stats"), ("GET", "/dashboard"), ("POST", "/admin/cache/clear")):
        answer = httpx.request(method, remote + path)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"]["code"] == "forbidden"
        assert httpx.request(method, proxy.url + path).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(remote + path).status_code == 200


def test_an_admin_key_guards_stats_dashboard_and_cache_clearing(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, auth={"admin_key": "adm-key-1"}))
    for method, path in (("GET", "/stats"), ("POST", "/admin/cache/clear")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = httpx.request(method, proxy.url + path, headers=headers)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
        assert httpx.request(method, proxy.url + path, headers={"Authorization": "Bearer adm-key-1"}).status_code == 200
    page = httpx.get(f"{proxy.url}/dashboard")
    assert page.status_code == 401 and "admin-key" in page.text, "the page holds no data and asks for the key"
    assert httpx.get(f"{proxy.url}/metrics").status_code == 200
    assert "adm-key-1" not in proxy.logs()


# -- key allow-lists --------------------------------------------------------------------------


def test_a_keys_model_allow_list_is_checked_before_anything_happens(start_proxy, fake_openai, fake_gemini, fake_ollama) -> None:
    keys = [
        {"name": "narrow", "key": "sk-narrow", "models": ["fast", "ollama/*"]},
        {"name": "wide", "key": "sk-wide"},
    ]
    proxy = start_proxy(three_providers(fake_openai, fake_gemini, fake_ollama, auth={"keys": keys}))
    narrow = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-narrow", max_retries=0)
    for model in ("gpt-4o-mini", "openai/gpt-4o-mini", "gemini/gemini-2.5-flash", "fast2"):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            narrow.chat.completions.create(model=model, messages=ASK)
        assert refused.value.status_code == 403
        assert refused.value.body["code"] == "model_not_allowed" and refused.value.body["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        narrow.embeddings.create(model="text-embedding-3-small", input="x")
    assert fake_openai.requests == [] and fake_gemini.requests == [] and fake_ollama.requests == []
    assert "gpt-4o-mini" not in httpx.get(f"{proxy.url}/readyz").text, "no breaker for a refused model"

    assert narrow.chat.completions.create(model="ollama/llama3.1", messages=ASK).choices[0].message.content
    fake_gemini.script(Reply(status=503, json={"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}))
    assert narrow.chat.completions.create(model="fast", messages=ASK).choices[0].message.content
    wide = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-wide", max_retries=0)
    assert wide.chat.completions.create(model="gpt-4o-mini", messages=ASK).choices[0].message.content


def test_an_allow_list_naming_an_unknown_provider_is_a_config_error(tmp_path, fake_openai) -> None:
    config = openai_config(fake_openai, auth={"keys": [{"name": "a", "key": "k", "models": ["nobody/*"]}]})
    result = sluice("check-config", write(tmp_path, config))
    assert result.returncode == 2 and "auth.keys[0].models[0]: names no configured provider" in result.stderr


# -- bounds -----------------------------------------------------------------------------------


def test_model_ids_in_url_paths_are_validated(start_proxy, fake_openai, fake_gemini, fake_ollama) -> None:
    proxy = start_proxy(three_providers(fake_openai, fake_gemini, fake_ollama))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)
    for model in ("gemini/../../files", "gemini/x?alt=media", "gemini/a#b", "gemini/a\x00b", "gemini/models/../cachedContents"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=model, messages=ASK)
        assert refused.value.body["param"] == "model"
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=model, input="x")
    assert fake_gemini.requests == []


def test_client_chosen_models_cannot_grow_metrics_or_breakers(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    with httpx.Client(base_url=proxy.url) as client:
        for n in range(1010):
            assert client.post(CHAT, json={"model": f"made-up-{n}", "messages": ASK}).status_code == 200
        for n in range(20):
            assert client.post(CHAT, json={"model": f"openai-nope/{n}"}).status_code == 400
        metrics = client.get("/metrics").text
        breakers = client.get("/readyz").json()["breakers"]
    models = set(re.findall(r'^sluice_requests_total\{[^}]*model="([^"]*)"', metrics, re.M))
    assert 200 <= len(models) <= 202 and "other" in models, len(models)
    assert not any(m.startswith("openai-nope") for m in models), "a refused request names no model"
    assert len(breakers) <= 1001 and "openai/other" in breakers, len(breakers)


# -- attribution ------------------------------------------------------------------------------


def test_a_failure_is_attributed_to_the_provider_that_failed_it(start_proxy, fake_openai, fake_gemini, fake_ollama) -> None:
    proxy = start_proxy(three_providers(fake_openai, fake_gemini, fake_ollama))
    stats = httpx.get(f"{proxy.url}/stats").json()
    assert stats["providers"] == {name: {"requests": 0, "errors": 0} for name in ("openai", "gemini", "ollama")}

    fake_ollama.script(Reply(status=500, json={"error": "model runner crashed"}))
    failed = httpx.post(f"{proxy.url}{CHAT}", json={"model": "ollama/llama3.1", "messages": ASK}, headers={"X-Request-ID": "fails-1"})
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_error"
    assert failed.headers["x-sluice-provider"] == "ollama"
    line = proxy.wait_for_log(lambda l: l.get("request_id") == "fails-1")[0]
    assert line["provider"] == "ollama" and line["upstream_model"] == "llama3.1" and line["error"] == "upstream_error"
    assert httpx.get(f"{proxy.url}/stats").json()["providers"]["ollama"] == {"requests": 1, "errors": 1}
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert re.search(r'sluice_requests_total\{.*provider="ollama".*status="502".*\} 1\.0', metrics), metrics
    assert 'provider="none"' not in metrics


# -- streamed answers' headers ----------------------------------------------------------------


def test_a_streamed_miss_reports_its_attempts_and_tokens_saved(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, dedup={"enabled": False}))
    padded = "a   question    with     runs      of       spaces        " * 4
    for stream in (False, True):
        fake_openai.script(Reply(status=503, json={"error": {"message": "busy"}}))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": padded + str(stream)}], "stream": stream}
        with httpx.stream("POST", f"{proxy.url}{CHAT}", json=body, headers={"X-Request-ID": f"s-{stream}"}) as answer:
            assert answer.status_code == 200
            head = answer.headers
            answer.read()
        assert head["x-sluice-cache"] == "miss" and head["x-sluice-attempts"] == "2", dict(head)
        saved = int(head["x-sluice-tokens-saved"])
        assert saved > 0
        line = proxy.wait_for_log(lambda l: l.get("request_id") == f"s-{stream}")[0]
        assert line["attempts"] == 2 and line["tokens_saved"] == saved


# -- bad input is a 4xx, a broken upstream a 502 ----------------------------------------------


@pytest.mark.parametrize("model", ["gemini/gemini-2.5-flash", "ollama/llama3.1"])
@pytest.mark.parametrize(
    "tool_calls",
    [
        [{"id": "call_1", "type": "function", "function": "get_weather"}],
        ["call_1"],
        [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": 42}}],
        [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}],
        {"id": "call_1"},
    ],
)
def test_malformed_tool_calls_are_a_400_for_translated_providers(translated_proxy, model, tool_calls) -> None:
    messages = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": tool_calls}]
    answer = httpx.post(f"{translated_proxy.url}{CHAT}", json={"model": model, "messages": messages})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [b'{"candidates": "none"}', b'{"candidates": [{"content": {"parts": "text"}}]}', b'{"candidates": [{"index": "0"}, {"index": 1}]}', b"<html>busy</html>", b'{"candidates": [', b""],
)
def test_a_gemini_answer_of_an_unexpected_shape_is_a_502(translated_proxy, fake_gemini, body) -> None:
    fake_gemini.script(Reply(body=body))
    answer = httpx.post(f"{translated_proxy.url}{CHAT}", json={"model": "gemini/gemini-2.5-flash", "messages": ASK})
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_error", answer.text
    assert answer.headers["x-sluice-provider"] == "gemini"


@pytest.fixture(scope="module")
def translated_proxy(tmp_path_factory, _openai_server, _gemini_server, _ollama_server):  # type: ignore[no-untyped-def]
    from tests.proxy_process import ProxyProcess

    config = three_providers(_openai_server, _gemini_server, _ollama_server)
    config["providers"][1]["api_key"] = "g-secret"
    config["breaker"] = {"failure_threshold": 1000}  # every example fails gemini on purpose
    process = ProxyProcess(config, tmp_path_factory.mktemp("translated")).wait_ready()
    yield process
    process.stop()
