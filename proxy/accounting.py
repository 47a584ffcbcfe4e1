"""Prices and the cost of a usage record (CONTRACT §2, the price file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.config import ConfigError


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None


FREE = Price()


class Prices:
    def __init__(self, models: dict[str, Price], default: Price | None) -> None:
        self._models = models
        self._default = default or FREE

    @classmethod
    def load(cls, path: str | None) -> Prices:
        if not path:
            return cls({}, None)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError([f"pricing_file: cannot read {path}: {exc.strerror}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"pricing_file: invalid YAML in {path}: {exc}"]) from None
        return cls.parse(data)

    @classmethod
    def parse(cls, data: Any) -> Prices:
        if not isinstance(data, dict):
            raise ConfigError(["pricing_file: must be a mapping with 'models' and optional 'default'"])
        problems: list[str] = []
        models: dict[str, Price] = {}
        for name, entry in (data.get("models") or {}).items():
            price = _price(entry, f"pricing_file.models.{name}", problems)
            if price is not None:
                models[str(name)] = price
        default = _price(data["default"], "pricing_file.default", problems) if data.get("default") else None
        if problems:
            raise ConfigError(problems)
        return cls(models, default)

    def price(self, provider: str, model: str) -> Price:
        return self._models.get(f"{provider}/{model}") or self._models.get(model) or self._default

    def cost(self, provider: str, model: str, usage: dict[str, Any] | None) -> float:
        if not usage:
            return 0.0
        price = self.price(provider, model)
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        cached = _int((usage.get("prompt_tokens_details") or {}).get("cached_tokens"))
        cached_price = price.cached_input if price.cached_input is not None else price.input
        return ((prompt - cached) * price.input + cached * cached_price + completion * price.output) / 1_000_000

    def input_cost(self, provider: str, model: str, tokens: int) -> float:
        return tokens * self.price(provider, model).input / 1_000_000


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _price(entry: Any, path: str, problems: list[str]) -> Price | None:
    if not isinstance(entry, dict):
        problems.append(f"{path}: must be a mapping with input and output")
        return None
    values: dict[str, float] = {}
    for field in ("input", "output", "cached_input"):
        value = entry.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"{path}.{field}: must be a non-negative number")
            return None
        values[field] = float(value)
    return Price(**values)
