"""``cache.max_bytes`` bounds the memory the cache really holds, parsed answers included.

The real server fills its memory cache well past ``max_bytes`` with
embeddings answers, the shape whose parsed objects outweigh their JSON the
most (~7x). Its resident memory may grow by ``max_bytes`` plus a stated
constant (``SLACK``: the allocator's free lists, request buffers, the
telemetry windows), no more. Counting only answer bytes, as the cache once
did, holds ~8x ``max_bytes`` here.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from proxy.cache.base import CachedAnswer, held_bytes
from proxy.completions import Completion
from tests.conftest import openai_config

MAX_BYTES = 16 * 1024 * 1024
SLACK = 24 * 1024 * 1024
INPUTS = 400  # per request: an answer of ~25 KB JSON and ~175 KB of parsed objects


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_filling_the_cache_grows_memory_by_at_most_max_bytes_and_a_constant(start_proxy, fake_openai) -> None:
    config = openai_config(fake_openai, cache={"max_bytes": MAX_BYTES, "max_entries": 100_000, "hit_lane": False})
    proxy = start_proxy(config)

    def fill(first: int, count: int) -> None:
        with httpx.Client(base_url=f"{proxy.url}/v1", timeout=30) as client:
            for number in range(first, first + count):
                body = {"model": "text-embedding-3-small", "input": [f"{number}-{i}" for i in range(INPUTS)]}
                response = client.post("/embeddings", json=body)
                assert response.status_code == 200 and response.headers["x-sluice-cache"] == "miss"

    fill(0, 40)  # warm: imports, buffers, the first entries
    before = _rss(proxy.process.pid)
    fill(40, 1200)  # ~30 MB of JSON, ~200 MB parsed: far past max_bytes however counted
    grown = _rss(proxy.process.pid) - before
    assert grown <= MAX_BYTES + SLACK, f"RSS grew {grown / 2**20:.1f} MiB for a {MAX_BYTES / 2**20:.0f} MiB cache"
    entries = httpx.get(f"{proxy.url}/stats").json()["cache"]["entries"]
    assert 0 < entries < 1240, "the cache evicted nothing: the test did not fill it"


def test_held_bytes_is_an_upper_bound_of_what_an_answer_holds() -> None:
    import sys

    import orjson

    def deep(value: object, seen: set[int]) -> int:
        if id(value) in seen:
            return 0
        seen.add(id(value))
        size = sys.getsizeof(value)
        if isinstance(value, dict):
            size += sum(deep(k, seen) + deep(v, seen) for k, v in value.items())
        elif isinstance(value, list):
            size += sum(deep(v, seen) for v in value)
        return size

    shapes = [
        {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"prompt_tokens": 1}}
        for text in ("hi", "word " * 2000, "héllo wörld ☃ " * 500, "ab😀" * 500)
    ] + [
        {"data": [{"object": "embedding", "index": i, "embedding": [0.5, -0.25, float(i)]} for i in range(1000)]},
        {"x": [str(i) for i in range(5000)]},
    ]
    for shape in shapes:
        body = orjson.dumps(shape)
        parsed = orjson.loads(body)
        held = sys.getsizeof(body) + deep(parsed, set())
        assert held <= held_bytes(CachedAnswer(Completion(body, parsed), "p")) <= 3 * held


async def test_the_cache_keeps_no_upstream_headers_of_the_call_that_made_an_answer() -> None:
    from proxy.cache.memory import MemoryCache

    live = Completion(b"{}", {}, upstream_headers={"x-request-id": "req_up_1"})
    cache = MemoryCache(10, 10**6)
    await cache.set("k", CachedAnswer(live, "p"), 60)
    stored = await cache.get("k")
    assert stored is not None and stored.completion.upstream_headers is None
    assert live.upstream_headers == {"x-request-id": "req_up_1"}  # the live answer still carries them
