"""The upstream pool gauge: requests waiting for a free connection, per provider, read when asked.

Nothing is counted per request here: each client keeps its own ``waiting``
(``proxy.http.UpstreamClient``), which moves only while its pool is full, and
this reads it when ``/metrics`` is scraped or ``/stats`` is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.http import UpstreamClient

METRIC = "sluice_upstream_pool_waiting"


class _HasClient(Protocol):
    client: UpstreamClient


def pool_waiting(providers: Mapping[str, _HasClient]) -> dict[str, int]:
    """``{provider: requests waiting}``, for ``/stats``."""
    return {name: provider.client.waiting for name, provider in providers.items()}


class PoolWaitingCollector(Collector):
    """``sluice_upstream_pool_waiting{provider}`` for a Prometheus registry.

    With several workers each process reports its own pools: register it on
    the registry a scrape renders (in multiprocess mode, the fresh one), and
    the worker that answers the scrape is the one counted.
    """

    def __init__(self, providers: Mapping[str, _HasClient]) -> None:
        self._providers = providers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(METRIC, "Requests waiting for a free upstream connection.", labels=["provider"])
        for name, waiting in pool_waiting(self._providers).items():
            gauge.add_metric([name], waiting)
        yield gauge
