"""Prices: the built-in table, what a price file changes, and usage in every client API's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.accounting import Prices, Usage, builtin_prices
from proxy.config import ConfigError

SONNET = {"input": 3.0, "cached_input": 0.3, "cache_write": 3.75, "output": 15.0}


def test_the_same_usage_costs_the_same_in_every_shape() -> None:
    """1,000 prompt tokens (600 read from the cache, 300 written to it) and 50 output tokens."""
    chat = {
        "prompt_tokens": 1000,
        "completion_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 600, "cache_creation_input_tokens": 300},
    }
    messages = {"input_tokens": 100, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 300, "output_tokens": 50}
    assert Usage.of(chat) == Usage.of(messages) == Usage(1000, 600, 300, 50)
    responses = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 600}, "output_tokens": 50}
    assert Usage.of(responses) == Usage(1000, 600, 0, 50)
    prices = Prices.parse({"models": {"claude-sonnet-4-5": SONNET}}, "test")
    cost = prices.costs("anthropic", "claude-sonnet-4-5", Usage.of(chat))
    assert cost.spent == pytest.approx((100 * 3.0 + 600 * 0.3 + 300 * 3.75 + 50 * 15.0) / 1e6)
    assert cost.saved_by_provider_cache == pytest.approx(600 * 2.7 / 1e6)
    assert prices.costs("anthropic", "claude-sonnet-4-5", Usage.of(messages)) == cost


def test_without_cache_prices_cached_tokens_cost_plain_input() -> None:
    prices = Prices.parse({"models": {"m": {"input": 2.0, "output": 4.0}}}, "test")
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 90}}
    assert prices.costs("p", "m", Usage.of(usage)).spent == pytest.approx((100 * 2.0 + 10 * 4.0) / 1e6)
    assert prices.costs("p", "m", Usage.of(usage)).saved_by_provider_cache == 0


def test_the_builtin_table_knows_dated_names_and_leaves_unknown_models_free() -> None:
    table = builtin_prices()
    assert table.price("anthropic", "claude-sonnet-4-5-20250929") == table.price("anthropic", "claude-sonnet-4-5")
    assert table.price("openai", "gpt-4o-mini-2024-07-18").input == 0.15, "not gpt-4o's price"
    assert table.price("gemini", "gemini-2.5-flash").cached_input is not None
    assert table.price("ollama", "llama3.1").input == 0.0


def test_a_price_file_replaces_whole_entries_and_prices_the_rest_by_default(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("default: {input: 1.0, output: 2.0}\nmodels:\n  gpt-4o: {input: 9.0, output: 9.0}\n")
    prices = Prices.load(str(path))
    assert prices.price("openai", "gpt-4o").cached_input is None, "the file's entry, whole"
    assert prices.price("openai", "gpt-4o-mini").input == 0.15, "the built-in table still"
    assert prices.price("openai", "my-finetune").input == 1.0, "the file's default"


def test_an_implied_price_file_may_be_missing_a_named_one_may_not(tmp_path: Path) -> None:
    assert Prices.load(str(tmp_path / "absent.yaml"), required=False).price("openai", "gpt-4o").input == 2.5
    with pytest.raises(ConfigError) as error:
        Prices.load(str(tmp_path / "absent.yaml"))
    assert error.value.problems[0].startswith("pricing_file: cannot read")


def test_a_bad_price_names_its_field() -> None:
    with pytest.raises(ConfigError) as error:
        Prices.parse({"models": {"m": {"input": 1.0, "cache_write": -1}}}, "pricing_file")
    assert error.value.problems == ["pricing_file.models.m.cache_write: must be a non-negative number"]
