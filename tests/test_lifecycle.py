"""CLI and process lifecycle: check-config, invalid configs, SIGTERM drain, client disconnects."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
import yaml

from tests.conftest import openai_config
from tests.fakes.openai import stream_chunks
from tests.fakes.server import Reply
from tests.proxy_process import REPO


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_check_config_prints_resolved_config_with_secrets_masked(tmp_path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "providers:\n"
        "  - {name: openai, type: openai, base_url: 'https://api.openai.com/v1', api_key: '${MY_KEY}'}\n"
        "  - {name: local, type: ollama, base_url: '${OLLAMA_URL:-http://127.0.0.1:11434}'}\n"
        "auth: {keys: [{name: a, key: sk-proxy-key-xyz}], admin_key: adm-secret}\n"
        "pricing_file: null\n"
    )
    result = run_cli("check-config", str(path), env={"MY_KEY": "sk-live-abcdef"})
    assert result.returncode == 0, result.stderr
    assert "sk-live-abcdef" not in result.stdout and "sk-proxy-key-xyz" not in result.stdout
    assert "adm-secret" not in result.stdout
    resolved = yaml.safe_load(result.stdout)
    assert resolved["providers"][0]["api_key"] == "***"
    assert resolved["providers"][1]["base_url"] == "http://127.0.0.1:11434"


def test_check_config_names_every_bad_field_and_exits_2(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "providers:\n"
        "  - {name: openai, type: openai, base_url: 'https://api.openai.com/v1'}\n"
        "  - {name: broken, type: grpc, base_url: 'ftp://nowhere'}\n"
        "cache: {ttl_seconds: -1}\n"
        "retry: {max_attempts: two}\n"
        "token_encodings: {gpt-6: p50k_base}\n"
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("providers[1].type:") for line in lines)
    assert any(line.startswith("providers[1].base_url:") for line in lines)
    assert any(line.startswith("cache.ttl_seconds:") for line in lines)
    assert any(line.startswith("retry.max_attempts:") for line in lines)
    assert any(line.startswith("token_encodings.gpt-6:") for line in lines)


def test_check_config_uses_env_var_path_and_missing_file_exits_2(tmp_path) -> None:
    result = run_cli("check-config", env={"SLUICE_CONFIG": str(tmp_path / "missing.yaml")})
    assert result.returncode == 2 and "missing.yaml" in result.stderr


def test_serve_with_invalid_config_exits_2_without_starting(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers: []\n")
    result = run_cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("providers:")


def test_sigterm_drains_an_in_flight_stream_then_exits_0(start_proxy, fake_openai) -> None:
    gate = threading.Event()
    chunks = stream_chunks("gpt-4o-mini", "drained stream completes")
    fake_openai.script(Reply(chunks=chunks, chunk_delay=0.05, gate=gate))
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
    received: list[str] = []

    def consume() -> None:
        with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=30) as response:
            received.extend(line for line in response.iter_lines() if line.startswith("data: "))

    client = threading.Thread(target=consume)
    client.start()
    while not fake_openai.requests:  # the request reached the upstream: it is in flight
        threading.Event().wait(0.01)
    proxy.process.send_signal(signal.SIGTERM)
    gate.set()
    client.join(30)
    assert proxy.process.wait(30) == 0
    assert received[-1] == "data: [DONE]"
    text = "".join(
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in received[:-1]
    )
    assert text == "drained stream completes"


def test_client_disconnect_mid_stream_closes_the_upstream(start_proxy, fake_openai) -> None:
    chunks = stream_chunks("gpt-4o-mini", " ".join(["word"] * 200))
    fake_openai.script(Reply(chunks=chunks, chunk_delay=0.05))
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break
    assert fake_openai.disconnected.wait(5), "the upstream stream was not released after the client left"
    assert httpx.get(f"{proxy.url}/healthz").status_code == 200


def test_client_disconnect_while_waiting_cancels_the_upstream_call(start_proxy, fake_openai) -> None:
    fake_openai.script(Reply(hang=True))
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}).encode()
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        for _ in range(1000):  # the call reached the upstream (within 10 s): only then does the client leave
            if fake_openai.requests:
                break
            threading.Event().wait(0.01)
        assert fake_openai.requests, "the request never reached the upstream"
    assert fake_openai.disconnected.wait(5), "the upstream call kept running after the client left"


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_before_the_answer_is_logged_as_disconnected(start_proxy, fake_openai, stream) -> None:
    fake_openai.script(Reply(hang=True))
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    assert fake_openai.disconnected.wait(5), "the upstream call kept running after the client left"
    lines = proxy.wait_for_log(lambda line: line.get("path") == "/v1/chat/completions")
    assert [(line["status"], line["error"]) for line in lines] == [(499, "client_disconnected")]
