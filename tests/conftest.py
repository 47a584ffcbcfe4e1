"""Shared fixtures: fake upstreams (real HTTP servers on loopback) and the real proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai import FakeOpenAI
from tests.proxy_process import ProxyProcess


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openai(_openai_server: FakeOpenAI) -> FakeOpenAI:
    _openai_server.reset()
    return _openai_server


@pytest.fixture(scope="session")
def _gemini_server():  # type: ignore[no-untyped-def]
    from tests.fakes.gemini import FakeGemini

    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture
def fake_gemini(_gemini_server):  # type: ignore[no-untyped-def]
    _gemini_server.reset()
    return _gemini_server


@pytest.fixture(scope="session")
def _ollama_server():  # type: ignore[no-untyped-def]
    from tests.fakes.ollama import FakeOllama

    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture
def fake_ollama(_ollama_server):  # type: ignore[no-untyped-def]
    _ollama_server.reset()
    return _ollama_server


@pytest.fixture(scope="session")
def _anthropic_server():  # type: ignore[no-untyped-def]
    from tests.fakes.anthropic import FakeAnthropic

    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(_anthropic_server):  # type: ignore[no-untyped-def]
    _anthropic_server.reset()
    return _anthropic_server


@pytest.fixture(scope="session")
def _every_server(_openai_server, _gemini_server, _ollama_server, _anthropic_server):  # type: ignore[no-untyped-def]
    """The four fakes, for a proxy shared by a module: OpenAI, Gemini, Ollama, Anthropic."""
    return _openai_server, _gemini_server, _ollama_server, _anthropic_server


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """``start_proxy(config_dict, env=None, args=None)`` → a ready proxy, stopped at test end."""
    started: list[ProxyProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, args: list[str] | None = None) -> ProxyProcess:
        proxy = ProxyProcess(config, tmp_path, env=env, args=args)
        started.append(proxy)
        return proxy.wait_ready()

    yield start
    for proxy in started:
        proxy.stop()


def openai_config(fake: FakeOpenAI, **sections: Any) -> dict[str, Any]:
    """A config with one OpenAI provider on the fake; keyword sections override."""
    provider = {"name": "openai", "type": "openai", "base_url": f"{fake.url}/v1", "api_key": "sk-upstream-secret-123"}
    provider.update(sections.pop("provider", {}))
    config: dict[str, Any] = {
        "providers": [provider],
        "routing": {"default_provider": "openai"},
        "retry": {"max_attempts": 3, "initial_backoff_ms": 1, "max_backoff_ms": 20},
        "pricing_file": None,
    }
    config.update(sections)
    return config
