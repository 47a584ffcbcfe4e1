"""Provider-side prompt caching end to end: usage from each provider's fake, read by the
official ``openai`` SDK, priced with the built-in table or a price file, and counted in
``/stats`` and ``/metrics`` beside Sluice's own savings."""

from __future__ import annotations

import os
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
from tests.fakes.openai import completion, stream_chunks, usage
from tests.fakes.server import Reply
from tests.proxy_process import REPO

SYSTEM = {"role": "system", "content": "You answer questions about the solar system in one sentence."}
FIRST = [SYSTEM, {"role": "user", "content": "How many moons does Mars have?"}]


def gemini_config(gemini: FakeGemini, **sections: Any) -> dict[str, Any]:
    """Gemini on its fake; no price file named, so the built-in table prices it."""
    config: dict[str, Any] = {
        "providers": [{"name": "gemini", "type": "gemini", "base_url": gemini.url + "/v1beta", "api_key": "g-secret"}],
        "cache": {"enabled": False},
    }
    config.update(sections)
    return config


def client(proxy) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)


def second_turn(first_answer: str) -> list[dict[str, Any]]:
    return [*FIRST, {"role": "assistant", "content": first_answer}, {"role": "user", "content": "And Jupiter?"}]


def stats(proxy) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return httpx.get(f"{proxy.url}/stats").json()


def gemini_flash_cost(prompt: int, cached: int, completion_tokens: int) -> float:
    """The built-in list price of gemini-2.5-flash (proxy/data/prices.yaml)."""
    return ((prompt - cached) * 0.30 + cached * 0.03 + completion_tokens * 2.50) / 1_000_000


def test_gemini_cached_prompt_is_reported_and_priced_by_the_builtin_table(start_proxy, fake_gemini) -> None:
    proxy = start_proxy(gemini_config(fake_gemini))
    sdk = client(proxy)
    first = sdk.chat.completions.create(model="gemini/gemini-2.5-flash", messages=FIRST)
    assert first.usage is not None and first.usage.prompt_tokens_details is None, "nothing cached yet"
    second = sdk.chat.completions.create(
        model="gemini/gemini-2.5-flash", messages=second_turn(first.choices[0].message.content or "")
    )
    usage = second.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 0 < cached < usage.prompt_tokens, "the first turn's prompt came from the cache"

    totals = stats(proxy)
    assert totals["tokens"]["cached_by_provider"] == cached
    assert totals["tokens"]["prompt"] == first.usage.prompt_tokens + usage.prompt_tokens
    assert totals["tokens"]["cached_by_provider_share"] == pytest.approx(cached / totals["tokens"]["prompt"], abs=1e-4)
    spent = gemini_flash_cost(first.usage.prompt_tokens, 0, first.usage.completion_tokens)
    spent += gemini_flash_cost(usage.prompt_tokens, cached, usage.completion_tokens)
    assert totals["cost_usd"]["spent"] == pytest.approx(spent)
    assert totals["cost_usd"]["saved_by_provider_cache"] == pytest.approx(cached * (0.30 - 0.03) / 1_000_000)
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert f'sluice_tokens_total{{kind="cached_by_provider"}} {float(cached)}' in metrics
    assert 'sluice_cost_usd_total{kind="saved_by_provider_cache"}' in metrics


def test_gemini_stream_usage_carries_cached_and_reasoning_tokens(start_proxy, fake_gemini) -> None:
    proxy = start_proxy(gemini_config(fake_gemini))
    sdk = client(proxy)
    first = sdk.chat.completions.create(model="gemini/gemini-2.5-flash", messages=FIRST)
    stream = sdk.chat.completions.create(
        model="gemini/gemini-2.5-flash",
        messages=second_turn(first.choices[0].message.content or ""),
        reasoning_effort="low",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else None
    assert reasoning == 5, "Gemini's thoughtsTokenCount"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert usage.completion_tokens == len(text.split(" ")) + reasoning, "reasoning counts inside completion tokens"
    assert stats(proxy)["tokens"]["cached_by_provider"] == usage.prompt_tokens_details.cached_tokens


def test_openai_cached_and_cache_write_tokens_use_their_prices(start_proxy, fake_openai, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "models:\n  gpt-4o-mini: {input: 10.0, cached_input: 1.0, cache_write: 12.5, output: 20.0}\n"
    )
    proxy = start_proxy(openai_config(fake_openai, pricing_file=str(prices), cache={"enabled": False}))
    read = usage(prompt=1000, completion=10)
    read["prompt_tokens_details"]["cached_tokens"] = 800
    written = usage(prompt=1000, completion=10)
    written["prompt_tokens_details"]["cache_creation_input_tokens"] = 600
    fake_openai.replies.append(Reply(json={**completion("gpt-4o-mini", "read"), "usage": read}))
    chunks = stream_chunks("gpt-4o-mini", "written")
    chunks[-1]["usage"] = written
    fake_openai.replies.append(Reply(chunks=chunks))
    sdk = client(proxy)

    answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=FIRST)
    assert answer.usage.prompt_tokens_details.cached_tokens == 800  # type: ignore[union-attr]
    list(sdk.chat.completions.create(model="gpt-4o-mini", messages=FIRST, stream=True))

    totals = stats(proxy)
    read_cost = (200 * 10.0 + 800 * 1.0 + 10 * 20.0) / 1_000_000
    write_cost = (400 * 10.0 + 600 * 12.5 + 10 * 20.0) / 1_000_000
    assert totals["cost_usd"]["spent"] == pytest.approx(read_cost + write_cost)
    assert totals["cost_usd"]["saved_by_provider_cache"] == pytest.approx(800 * 9.0 / 1_000_000)
    assert totals["tokens"]["cached_by_provider"] == 800


def test_a_relative_price_file_resolves_against_the_config_folder(start_proxy, fake_openai, tmp_path: Path) -> None:
    (tmp_path / "team-prices.yaml").write_text("models:\n  gpt-4o-mini: {input: 1000000.0, output: 0.0}\n")
    proxy = start_proxy(openai_config(fake_openai, pricing_file="team-prices.yaml", cache={"enabled": False}))
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=FIRST)
    assert stats(proxy)["cost_usd"]["spent"] == pytest.approx(11.0), "the fake's 11 prompt tokens at $1/token"


def sluice(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI run from ``cwd`` (outside the repository) on this worktree's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "proxy", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_a_config_elsewhere_without_a_price_file_is_valid_run_from_anywhere(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text(yaml.safe_dump({"providers": [{"name": "openai", "type": "openai", "api_key": "sk-x"}]}))
    checked = sluice(["check-config", str(config)], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_a_named_price_file_that_is_missing_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(yaml.safe_dump({"providers": [{"name": "openai", "type": "openai"}], "pricing_file": "nope.yaml"}))
    checked = sluice(["check-config", str(config)], cwd=tmp_path)
    assert checked.returncode == 2
    assert checked.stderr.startswith("pricing_file: cannot read") and str(tmp_path / "nope.yaml") in checked.stderr
