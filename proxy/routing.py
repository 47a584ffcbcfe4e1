"""Model routing (CONTRACT §3): the client's ``model`` picks an ordered list of targets."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config, Target
from proxy.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: its targets in fallback order.

    ``key`` names the route in cache keys, so an alias and a direct
    ``provider/model`` request never share answers by accident.
    """

    targets: tuple[Target, ...]
    key: str


class Router:
    def __init__(self, config: Config) -> None:
        self._aliases = {alias.name: alias.targets for alias in config.models}
        self._providers = {provider.name for provider in config.providers}
        self._default = config.routing.default_provider
        self._memo: dict[str, Route] = {}

    def resolve(self, model: str) -> Route:
        route = self._memo.get(model)
        if route is None:
            route = self._resolve(model)
            if len(self._memo) < 10_000:
                self._memo[model] = route
        return route

    def _resolve(self, model: str) -> Route:
        targets = self._aliases.get(model)
        if targets is not None:
            return Route(targets, f"alias:{model}")
        prefix, slash, rest = model.partition("/")
        if slash and rest and prefix in self._providers:
            target = Target(prefix, rest)
        elif self._default is not None:
            target = Target(self._default, model)
        else:
            raise ModelNotFound(f"The model '{model}' does not exist: it is no alias and names no provider.", param="model")
        return Route((target,), target.label)
