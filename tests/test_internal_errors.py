"""A bug inside Sluice becomes one clean OpenAI-shaped 500; the server keeps serving.

A real bug cannot be produced on purpose, so these tests run the real app
under uvicorn, with Sluice's own server options, in this process, and make
one internal method raise.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from proxy.app import create_app
from proxy.config import load_config
from proxy.pipeline import Pipeline
from proxy.server import _uvicorn_options
from proxy.telemetry.stats import Stats
from tests.conftest import openai_config
from tests.fakes.server import free_port

SECRET = "sk-internal-detail-777"


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError(f"a bug that mentions {SECRET}")


@pytest.fixture
def server(fake_openai, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(openai_config(fake_openai)))
    config = load_config(str(path))
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=free_port()))
    runner = uvicorn.Server(uvicorn.Config(create_app(config), lifespan="on", **_uvicorn_options(config)))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.server.port}"
    deadline = time.monotonic() + 10
    while not runner.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-process server did not start"
        time.sleep(0.02)
    yield url
    runner.should_exit = True
    thread.join(10)


def assert_clean_500(response: httpx.Response) -> None:
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "internal_error"
    assert SECRET not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"]


def test_a_bug_on_the_request_path_is_a_clean_500(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{server}/v1/chat/completions", json=body).status_code == 200
    monkeypatch.setattr(Pipeline, "_lookup", _boom)
    response = httpx.post(f"{server}/v1/chat/completions", json=body, headers={"X-Request-ID": "bug-1"})
    assert_clean_500(response)
    assert response.headers["x-request-id"] == "bug-1"
    monkeypatch.undo()
    assert httpx.post(f"{server}/v1/chat/completions", json=body).status_code == 200, "still serving"
    stats = httpx.get(f"{server}/stats").json()
    assert stats["requests"] == {"total": 3, "errors": 1}


def test_a_bug_in_another_endpoint_is_a_clean_500(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Stats, "snapshot", _boom)
    assert_clean_500(httpx.get(f"{server}/stats"))
    monkeypatch.undo()
    assert httpx.get(f"{server}/stats").status_code == 200
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
