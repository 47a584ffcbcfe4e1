"""Micro-benchmarks of per-request costs: one successful attempt through retries and
breaker, one hit-lane lookup, and the spans of one traced request. Run: ``python -m bench.micro``
(one core, a quiet machine).

Each figure is the best of ``ROUNDS`` rounds, in µs per call: what the code costs, not
what the machine's neighbours did meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import structlog.testing

from proxy.cache.base import CachedAnswer
from proxy.cache.memory import MemoryCache
from proxy.completions import Completion
from proxy.config import BreakerConfig, Config, ProviderConfig, RetryConfig, Target
from proxy.hit_lane import HitLane
from proxy.resilience import Attempts, Breakers, Resilience
from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord
from proxy.tracing import Tracing

ROUNDS = 7
CALLS = 20_480
BATCH = 512
"""Spans the export thread writes in a row (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``'s default)."""


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
    lane = HitLane(cache, Telemetry(), frozenset({b"/v1/chat/completions"}))
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


ANSWER = (
    b'{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Sure!"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":52,"completion_tokens":18,"total_tokens":70,'
    b'"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}'
)


def tracing_round() -> tuple[float, float]:
    """The spans of one proxied request per call, in two parts (seconds for all calls): in the
    request, as middleware and resilience make them (the request's started, one attempt
    answered, the request's finished: both queued); and written, a batch at a time, as the
    export thread writes them (both spans to bytes)."""
    provider = ProviderConfig(name="openai", type="openai", base_url="http://127.0.0.1:9/v1")
    target = Target("openai", "gpt-4o-mini")
    scope = {"path": "/v1/chat/completions", "method": "POST", "headers": [(b"content-type", b"application/json")]}
    tracer = Tracing(Config(providers=(provider,)), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    queued: list[object] = []
    tracer.exporter.add = queued.append  # type: ignore[method-assign]  # written here, not sent
    completions = [Completion(ANSWER, orjson.loads(ANSWER)) for _ in range(CALLS)]  # each request its own answer
    records = [RequestRecord("req", "POST", "/v1/chat/completions", 0.0) for _ in range(CALLS)]
    encode, writing = tracer.encode, 0.0
    started = time.perf_counter()
    for record, completion in zip(records, completions):
        token = tracer.start_request(scope, record)
        span = tracer.start_attempt()
        tracer.end_attempt(span, target, 1, completion, None)  # type: ignore[arg-type]
        record.model, record.provider, record.upstream_model = "gpt-4o-mini", "openai", "gpt-4o-mini"
        record.attempts, record.status, record.completion = 1, 200, completion
        record.prompt_tokens, record.completion_tokens = 52, 18  # as the pipeline reads them
        tracer.finish_request(record, token)  # type: ignore[arg-type]
        if len(queued) == BATCH // 2:  # a request's span and its attempt's: one item
            batch_started = time.perf_counter()
            for item in queued:
                encode(item)  # type: ignore[arg-type]
            queued.clear()
            writing += time.perf_counter() - batch_started
    elapsed = time.perf_counter() - started - writing
    with structlog.testing.capture_logs():  # nothing was queued: nothing is sent
        tracer.exporter.shutdown()
    return elapsed, writing


def main() -> None:
    print(f"resilience, one successful attempt: {best(resilience_round):.2f} µs per call")
    print(f"hit lane lookup, a hit:             {best(lane_round):.2f} µs per call")
    rounds = [tracing_round() for _ in range(ROUNDS)]
    in_request, written = (min(parts) / CALLS * 1e6 for parts in zip(*rounds))
    print(f"tracing, one traced request:        {in_request:.2f} µs per call in the request")
    print(f"                                    {written:.2f} µs per call written (export thread)")


if __name__ == "__main__":
    main()
