"""The semantic cache on a labelled set: hits on paraphrases, false hits on near-misses, lookup time.

    .venv/bin/python bench/semantic.py

``bench/data/semantic_pairs.jsonl`` holds pairs of queries labelled
``paraphrase`` (the same answer serves both) or ``near_miss`` (it must not:
swapped units, other numbers or entities, negations, swapped directions).
For each pair the first query is stored and the second looked up, in one
scope, with the built-in embedder (``proxy.cache.embedder.StaticEmbedder``),
the way ``proxy.cache.semantic`` decides: a hit needs the cosine similarity at
or above the threshold and the same key terms (``proxy.cache.terms``). The
table shows thresholds around the shipped one, and the similarity alone
(no key terms) for comparison. Then the lookup time: the p50 and p99 of
``SemanticCache.lookup`` (key terms, scope hash, and the embedding and
comparison when an entry has the same key terms) for the second queries,
over an index of 10,000 entries in one scope holding the first ones.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path

from proxy.cache.base import CacheBackend, CachedAnswer
from proxy.cache.embedder import StaticEmbedder
from proxy.cache.semantic import SemanticCache
from proxy.cache.terms import key_terms, normalize
from proxy.completions import Completion
from proxy.config import SEMANTIC_THRESHOLD, SemanticConfig
from proxy.surfaces.base import SemanticParts
from proxy.surfaces.chat import ChatSurface

PAIRS = Path(__file__).resolve().parent / "data" / "semantic_pairs.jsonl"
THRESHOLDS = tuple(sorted({0.5, 0.7, 0.8, 0.85, 0.9, 0.95, SEMANTIC_THRESHOLD}))
ENTRIES = 10_000
LOOKUPS = 2_000


def rates(pairs: list[dict], embedder: StaticEmbedder) -> str:
    scored = []
    for pair in pairs:
        first, second = normalize(pair["a"]), normalize(pair["b"])
        a, b = embedder.embed_now(first), embedder.embed_now(second)
        similarity = float(a @ b) if a is not None and b is not None else 0.0
        scored.append((pair["label"], similarity, key_terms(first) == key_terms(second)))
    paraphrases = sum(1 for label, _, _ in scored if label == "paraphrase")
    near_misses = len(scored) - paraphrases
    lines = [
        f"{paraphrases} paraphrase pairs, {near_misses} near-miss pairs",
        "",
        "| threshold | paraphrases hit | near-misses hit (false hits) | similarity alone: paraphrases | similarity alone: false hits |",
        "|---|---|---|---|---|",
    ]
    for threshold in THRESHOLDS:
        hit = sum(1 for label, s, same in scored if label == "paraphrase" and s >= threshold and same)
        false = sum(1 for label, s, same in scored if label == "near_miss" and s >= threshold and same)
        alone = sum(1 for label, s, _ in scored if label == "paraphrase" and s >= threshold)
        alone_false = sum(1 for label, s, _ in scored if label == "near_miss" and s >= threshold)
        shipped = " (shipped)" if threshold == SEMANTIC_THRESHOLD else ""
        lines.append(
            f"| {threshold}{shipped} | {hit} ({hit / paraphrases:.1%}) | {false} | "
            f"{alone} ({alone / paraphrases:.1%}) | {alone_false} ({alone_false / near_misses:.1%}) |"
        )
    return "\n".join(lines)


async def lookup_times(pairs: list[dict], embedder: StaticEmbedder) -> str:
    cache = SemanticCache(SemanticConfig(mode="on", max_entries=ENTRIES), _EveryAnswer(), embedder)
    words = sorted({w for p in pairs for w in (p["a"] + " " + p["b"]).split()})
    rng = random.Random(15)
    stored = [p["a"] for p in pairs]
    stored += [" ".join(rng.choices(words, k=8)) + f" {n}" for n in range(ENTRIES - len(stored))]
    for n, text in enumerate(stored):
        query, _ = await cache.lookup("openai/gpt-4o-mini", "chat", _parts(text), "anonymous", "safe")
        assert query is not None
        await cache.store(query, f"{n:040x}")
    assert len(cache.index) == ENTRIES
    texts = [p["b"] for p in pairs]
    timings = []
    for n in range(LOOKUPS):
        parts = _parts(texts[n % len(texts)])
        started = time.perf_counter()
        await cache.lookup("openai/gpt-4o-mini", "chat", parts, "anonymous", "safe")
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p50, p99 = statistics.median(timings), timings[int(len(timings) * 0.99)]
    return (
        f"lookup with {ENTRIES:,} entries in one scope (the labelled set's first queries among them), "
        f"looking up the second queries: p50 {p50:.3f} ms, p99 {p99:.3f} ms ({LOOKUPS:,} lookups)"
    )


class _EveryAnswer(CacheBackend):
    """An exact cache that holds an answer for every key, so hits are timed whole."""

    answer = CachedAnswer(Completion.from_data({"choices": []}), "openai")

    async def get(self, key: str) -> CachedAnswer | None:
        return self.answer

    async def set(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        return None

    async def clear(self) -> int:
        return 0

    async def entries(self) -> int:
        return 0


def _parts(text: str) -> SemanticParts:
    """A chat request asking ``text``, as the semantic cache sees it."""
    parts = ChatSurface().semantic_parts({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": text}]})
    assert parts is not None
    return parts


def main() -> int:
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    embedder = StaticEmbedder()
    embedder.load_now()
    print(rates(pairs, embedder))
    print()
    print(asyncio.run(lookup_times(pairs, embedder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
