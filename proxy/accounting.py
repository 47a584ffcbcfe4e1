"""Prices and the cost of a usage record (CONTRACT §2, the price file).

Usage is read in any of the three client APIs' shapes (``Usage.of``). In the
hub's (Chat Completions) shape ``prompt_tokens`` counts every input token,
provider-cached reads (``prompt_tokens_details.cached_tokens``) and cache
writes (``prompt_tokens_details.cache_write_tokens``, OpenAI's name, or
``cache_creation_input_tokens``, Anthropic's) included; ``completion_tokens``
counts reasoning tokens too, which are billed as output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from proxy.config import ConfigError

PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")
NAME_SEPARATORS = frozenset("-:@_")
MEMO_LIMIT = 4096  # (provider, model) pairs remembered; models are few


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens; a missing cache price bills those tokens as plain input."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """One answer's cost, and what the provider's prompt cache saved on it."""

    spent: float = 0.0
    saved_by_provider_cache: float = 0.0


FREE = Price()
NO_COST = Cost()


@dataclass(frozen=True, slots=True)
class Usage:
    """A usage record split by how providers bill it: every input token (``prompt``),
    of which ``cached`` were read from and ``cache_write`` written to the provider's
    prompt cache, and every output token (``completion``, ``reasoning`` included)."""

    prompt: int
    cached: int
    cache_write: int
    completion: int
    reasoning: int = 0

    @classmethod
    def of(cls, usage: dict[str, Any]) -> Usage:
        """From Chat Completions' ``usage``, Responses' or Anthropic Messages'."""
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            details = _details(usage, "prompt_tokens_details")
            return cls(
                token_count(usage.get("prompt_tokens")),
                token_count(details.get("cached_tokens")),
                token_count(details.get("cache_write_tokens")) or token_count(details.get("cache_creation_input_tokens")),
                token_count(usage.get("completion_tokens")),
                token_count(_details(usage, "completion_tokens_details").get("reasoning_tokens")),
            )
        if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
            # Messages: input_tokens counts only what was neither read from nor written to the cache.
            cached, written = token_count(usage.get("cache_read_input_tokens")), token_count(usage.get("cache_creation_input_tokens"))
            return cls(token_count(usage.get("input_tokens")) + cached + written, cached, written, token_count(usage.get("output_tokens")))
        details = _details(usage, "input_tokens_details")
        return cls(
            token_count(usage.get("input_tokens")),
            token_count(details.get("cached_tokens")),
            token_count(details.get("cache_write_tokens")),
            token_count(usage.get("output_tokens")),
            token_count(_details(usage, "output_tokens_details").get("reasoning_tokens")),
        )


def _details(usage: dict[str, Any], name: str) -> dict[str, Any]:
    details = usage.get(name)
    return details if isinstance(details, dict) else {}


class Prices:
    """The built-in table (``proxy/data/prices.yaml``) extended by the config's price file."""

    def __init__(self, models: dict[str, Price], default: Price | None) -> None:
        self._models = models
        self._default = default or FREE
        self._found: dict[tuple[str, str], Price] = {}

    @classmethod
    def load(cls, path: str | None, required: bool = True) -> Prices:
        """The built-in table, extended by ``path`` when given; a file that is not
        ``required`` (the implied default) may be absent."""
        builtin = builtin_prices()
        if not path:
            return builtin
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            if required:
                raise ConfigError([f"pricing_file: cannot read {path}: no such file"]) from None
            return builtin
        except OSError as exc:
            raise ConfigError([f"pricing_file: cannot read {path}: {exc.strerror}"]) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"pricing_file: invalid YAML in {path}: {exc}"]) from None
        return builtin.extended(cls.parse(data, "pricing_file"))

    @classmethod
    def parse(cls, data: Any, where: str) -> Prices:
        if not isinstance(data, dict):
            raise ConfigError([f"{where}: must be a mapping with 'models' and optional 'default'"])
        problems: list[str] = []
        models: dict[str, Price] = {}
        for name, entry in (data.get("models") or {}).items():
            price = _price(entry, f"{where}.models.{name}", problems)
            if price is not None:
                models[str(name)] = price
        default = _price(data["default"], f"{where}.default", problems) if data.get("default") else None
        if problems:
            raise ConfigError(problems)
        return cls(models, default)

    def extended(self, other: Prices) -> Prices:
        """This table with ``other``'s entries (whole entries) and default winning."""
        default = other._default if other._default is not FREE else self._default
        return Prices({**self._models, **other._models}, default)

    def price(self, provider: str, model: str) -> Price:
        """``provider/model``, else ``model``; each exact, else its longest listed prefix
        ending at a separator (``gpt-4o-2024-08-06`` → ``gpt-4o``); else the default."""
        found = self._found.get((provider, model))
        if found is None:
            found = self._lookup(f"{provider}/{model}") or self._lookup(model) or self._default
            if len(self._found) < MEMO_LIMIT:
                self._found[(provider, model)] = found
        return found

    def _lookup(self, name: str) -> Price | None:
        exact = self._models.get(name)
        if exact is not None:
            return exact
        best, best_length = None, 0
        for known, price in self._models.items():
            n = len(known)
            if best_length < n < len(name) and name[n] in NAME_SEPARATORS and name.startswith(known):
                best, best_length = price, n
        return best

    def costs(self, provider: str, model: str, tokens: Usage) -> Cost:
        """What an answer's usage (``Usage.of``) cost, and what provider-side prompt caching saved against full price."""
        price = self.price(provider, model)
        cached_price = price.input if price.cached_input is None else price.cached_input
        write_price = price.input if price.cache_write is None else price.cache_write
        plain = max(0, tokens.prompt - tokens.cached - tokens.cache_write)
        spent = (
            plain * price.input
            + tokens.cached * cached_price
            + tokens.cache_write * write_price
            + tokens.completion * price.output
        ) / 1_000_000
        saved = tokens.cached * (price.input - cached_price) / 1_000_000
        return Cost(spent, saved)

    def input_cost(self, provider: str, model: str, tokens: int) -> float:
        return tokens * self.price(provider, model).input / 1_000_000


@functools.cache
def builtin_prices() -> Prices:
    """The shipped list prices, read once."""
    text = resources.files("proxy").joinpath("data/prices.yaml").read_text(encoding="utf-8")
    return Prices.parse(yaml.safe_load(text), "proxy/data/prices.yaml")


def token_count(value: Any) -> int:
    """A token count as a usage record gives one (a JSON integer), else 0: an upstream's malformed
    usage counts as none rather than failing the request."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _price(entry: Any, path: str, problems: list[str]) -> Price | None:
    if not isinstance(entry, dict):
        problems.append(f"{path}: must be a mapping with input and output")
        return None
    values: dict[str, float] = {}
    for name in PRICE_FIELDS:
        value = entry.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"{path}.{name}: must be a non-negative number")
            return None
        values[name] = float(value)
    return Price(**values)
