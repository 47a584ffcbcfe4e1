"""Micro-benchmarks of two per-request costs: one successful attempt through retries and
breaker, and one hit-lane lookup. Run: ``python -m bench.micro`` (one core, a quiet machine).

Each figure is the best of ``ROUNDS`` rounds, in µs per call: what the code costs, not
what the machine's neighbours did meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.cache.base import CachedAnswer
from proxy.cache.memory import MemoryCache
from proxy.completions import Completion
from proxy.config import BreakerConfig, RetryConfig, Target
from proxy.hit_lane import HitLane
from proxy.resilience import Attempts, Breakers, Resilience
from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord

ROUNDS = 7
CALLS = 20_000


def best(run_round: Callable[[], float]) -> float:
    """µs per call, best of ``ROUNDS``."""
    return min(run_round() for _ in range(ROUNDS)) / CALLS * 1e6


def resilience_round() -> float:
    """One successful attempt per call through ``Resilience.run``, as the pipeline makes it."""
    resilience = Resilience(RetryConfig(), Breakers(BreakerConfig()))
    targets = (Target("openai", "gpt-4o-mini"),)

    async def attempt(target: Target) -> int:
        return 1

    async def calls() -> float:
        started = time.perf_counter()
        for _ in range(CALLS):
            await resilience.run(targets, attempt, Attempts())
        return time.perf_counter() - started

    return asyncio.run(calls())


def lane_round() -> float:
    """One hit per call through ``HitLane.lookup`` (the protocol's question before any ASGI task)."""
    cache = MemoryCache(1000, 10**8)
    answer = CachedAnswer(Completion(b"{}", {}), "openai")
    asyncio.run(cache.set("k", answer, 60))
    lane = HitLane(cache, Telemetry())
    path, body = b"/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    headers = [(b"host", b"localhost"), (b"authorization", b"Bearer sk-x"), (b"content-type", b"application/json")]
    record = RequestRecord("learned", "POST", "/v1/chat/completions", 0.0)
    for _ in range(2):  # the lane learns on the second hit
        lane.learn({"raw_path": path, "headers": headers}, body, "k", answer, [], b"{}", False, record)
    assert lane.lookup(path, headers, body) is not None
    lookup = lane.lookup
    started = time.perf_counter()
    for _ in range(CALLS):
        lookup(path, headers, body)
    return time.perf_counter() - started


def main() -> None:
    print(f"resilience, one successful attempt: {best(resilience_round):.2f} µs per call")
    print(f"hit lane lookup, a hit:             {best(lane_round):.2f} µs per call")


if __name__ == "__main__":
    main()
