"""Provider prompt caching end to end, in every client API from every provider.

Each provider's fake reports the same usage in its own fields (``report_usage``): 1,000
input tokens, 800 read from its prompt cache and 100 written to it. Through the real
server, each client API's official SDK must read them in its own fields: Chat Completions
and Responses count cache reads and writes inside the input tokens, Anthropic's Messages
apart from them. Gemini reports no cache writes and Ollama no caching, so those stay 0.
``/stats`` counts the cached tokens and prices them with ``cached_input`` and ``cache_write``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import FakeServer, ReportedUsage
from tests.proxy_process import ProxyProcess
from tests.test_messages_e2e import config as every_provider

REPORT = ReportedUsage(prompt=1000, cached=800, written=100, completion=20)
MODELS = {
    "openai": "gpt-4o-mini",
    "gemini": "gemini-2.5-flash",
    "ollama": "llama3.1",
    "anthropic": "claude-sonnet-4-5-20250929",
}
PRICE = {"input": 2.0, "cached_input": 0.5, "cache_write": 2.5, "output": 8.0}  # USD per 1M tokens
QUESTION = "How many moons does Mars have?"
# What reaches the client of each provider: Gemini reports no writes, Ollama no caching.
EXPECTED = {
    "openai": REPORT,
    "anthropic": REPORT,
    "gemini": ReportedUsage(prompt=1000, cached=800, written=0, completion=20),
    "ollama": ReportedUsage(prompt=1000, cached=0, written=0, completion=20),
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, _every_server: tuple[FakeServer, ...]) -> Iterator[ProxyProcess]:
    """One server for the module, every provider on its fake, no Sluice cache, one price everywhere."""
    folder = tmp_path_factory.mktemp("cached-usage")
    prices = folder / "prices.yaml"
    prices.write_text(yaml.safe_dump({"models": {f"{name}/{model}": PRICE for name, model in MODELS.items()}}))
    process = ProxyProcess(every_provider(_every_server, pricing_file=str(prices)), folder)
    yield process.wait_ready()
    process.stop()


@pytest.fixture
def fakes(
    fake_openai: FakeOpenAI, fake_gemini: FakeGemini, fake_ollama: FakeOllama, fake_anthropic: FakeAnthropic
) -> dict[str, FakeServer]:
    """The fakes, reset, each reporting ``REPORT`` as its usage."""
    servers: dict[str, FakeServer] = {"openai": fake_openai, "gemini": fake_gemini, "ollama": fake_ollama, "anthropic": fake_anthropic}
    for server in servers.values():
        server.report_usage = REPORT
    return servers


def chat(proxy: ProxyProcess, model: str, stream: bool) -> ReportedUsage:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": QUESTION}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(model=model, messages=messages).usage
    assert usage is not None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details else None
    written = details.cache_write_tokens if details else None
    return ReportedUsage(usage.prompt_tokens, cached or 0, written or 0, usage.completion_tokens)


def responses(proxy: ProxyProcess, model: str, stream: bool) -> ReportedUsage:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    if stream:
        events = list(client.responses.create(model=model, input=QUESTION, stream=True))
        assert events[-1].type == "response.completed"
        usage = events[-1].response.usage
    else:
        usage = client.responses.create(model=model, input=QUESTION).usage
    assert usage is not None
    details = usage.input_tokens_details
    return ReportedUsage(usage.input_tokens, details.cached_tokens, details.cache_write_tokens, usage.output_tokens)


def messages(proxy: ProxyProcess, model: str, stream: bool) -> ReportedUsage:
    """Anthropic's ``input_tokens`` leaves out cache reads and writes: added back for comparison."""
    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    ask: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": QUESTION}]}
    if stream:
        with client.messages.stream(**ask) as events:
            usage = events.get_final_message().usage
    else:
        usage = client.messages.create(**ask).usage
    cached, written = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
    return ReportedUsage(usage.input_tokens + cached + written, cached, written, usage.output_tokens)


def stats(proxy: ProxyProcess) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/stats").json()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", list(MODELS))
@pytest.mark.parametrize("api", [chat, responses, messages], ids=["chat", "responses", "messages"])
def test_provider_cache_usage_reaches_every_client_api_and_is_priced(
    proxy: ProxyProcess, fakes: dict[str, FakeServer], api: Any, provider: str, stream: bool
) -> None:
    before = stats(proxy)
    expected = EXPECTED[provider]
    assert api(proxy, f"{provider}/{MODELS[provider]}", stream) == expected
    assert len(fakes[provider].requests) == 1

    after = stats(proxy)
    tokens = {key: after["tokens"][key] - before["tokens"][key] for key in ("prompt", "completion", "cached_by_provider")}
    assert tokens == {"prompt": expected.prompt, "completion": expected.completion, "cached_by_provider": expected.cached}
    plain = expected.prompt - expected.cached - expected.written
    spent = (
        plain * PRICE["input"]
        + expected.cached * PRICE["cached_input"]
        + expected.written * PRICE["cache_write"]
        + expected.completion * PRICE["output"]
    ) / 1_000_000
    saved = expected.cached * (PRICE["input"] - PRICE["cached_input"]) / 1_000_000
    assert after["cost_usd"]["spent"] - before["cost_usd"]["spent"] == pytest.approx(spent)
    cache_saving = after["cost_usd"]["saved_by_provider_cache"] - before["cost_usd"]["saved_by_provider_cache"]
    assert cache_saving == pytest.approx(saved)
