"""The semantic cache: an earlier answer for a similar (not identical) request, in any client API.

Asked only after an exact miss, and only when the request is in: its
``X-Sluice-Semantic: on|off`` header decides, else its proxy key's
``semantic: true|false``, else ``cache.semantic.mode`` (``on``, or ``opt-in``:
only what the header or key opts in). A request takes part when its last turn is
the user's text (``Surface.semantic_parts``: Chat Completions' and Messages'
last message, Responses' ``input``) and, by default (``deterministic_only``),
it asks for ``temperature: 0`` with no tools.

Every entry lives in a scope: the client API, the routed model, the caller's
identity and everything in the request but that last user turn (system prompt
or instructions, earlier turns, tools, sampling parameters; as the exact key,
``stream`` and ``user`` aside). Only entries of the same scope are compared,
so another API, key, model, system prompt or temperature never hits. Within a
scope a hit needs both a cosine similarity of at least ``threshold`` and the
same key terms (``proxy.cache.terms``), so "5 km in miles" never takes the
answer of "5 miles in km".

A lookup embeds the query only when some entry of its scope has its key
terms (no hit is possible otherwise); else it is embedded once, at store.

An entry holds the query's vector, its key terms and the exact cache key of
its answer; the answer itself stays in the exact cache (and expires with it).
The index keeps at most ``max_entries`` entries, the oldest going first:
about 4 × dimensions + 1 KB each, so under 16 MB for 10,000 entries with
the built-in 64-dimension model, under 80 MB with a provider's 1,536
(tests/test_semantic_cache.py checks the first).

With the Redis backend each stored entry is also appended to one Redis
stream, trimmed to ``max_entries``; every process reads what is new there
before it looks up, so all workers and replicas share the entries (and
their answers, which are in the Redis cache). Redis trouble only skips that
reading: the lookup goes on with what this process has.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from proxy.cache.base import CacheBackend, CachedAnswer, CacheUnavailable
from proxy.cache.keys import IGNORED_FIELDS
from proxy.cache.terms import key_terms, normalize
from proxy.config import Config, SemanticConfig
from proxy.errors import SluiceError
from proxy.redis_link import RedisLink, RedisUnavailable

if TYPE_CHECKING:
    import numpy as np

    from proxy.cache.embedder import Embedder
    from proxy.providers.base import Provider
    from proxy.requests import RequestOptions
    from proxy.shared_state import SharedState

STREAM = "sluice:semantic"
_READ_COUNT = 1000  # stream entries read per round trip
_TERMS_SEPARATOR = "\x1f"


@dataclass(slots=True)
class SemanticQuery:
    """A request's part in the semantic cache, computed once at lookup and reused to store."""

    scope: str
    terms: tuple[str, ...]
    text: str  # normalized, what the embedder sees
    vector: np.ndarray | None = None  # embedded only when needed: a lookup that could hit, or a store


@dataclass(slots=True)
class SemanticHit:
    answer: CachedAnswer
    similarity: float


class SemanticIndex:
    """Bounded, in-process: at most ``max_entries`` entries over all scopes, oldest out first.

    Entries are grouped by scope and key terms, the two things a hit needs
    equal, so a lookup compares the query's vector only with the few entries
    that could answer it: constant time however many entries there are.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._order: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()  # (scope, key) → terms
        self._groups: dict[tuple[str, tuple[str, ...]], dict[str, np.ndarray]] = {}  # (scope, terms) → key → vector

    def __len__(self) -> int:
        return len(self._order)

    def add(self, scope: str, vector: np.ndarray, terms: tuple[str, ...], key: str) -> None:
        if (scope, key) in self._order:
            return
        self._order[(scope, key)] = terms
        self._groups.setdefault((scope, terms), {})[key] = vector
        while len(self._order) > self.max_entries:
            (old_scope, old_key), old_terms = next(iter(self._order.items()))
            self.discard(old_scope, old_key, old_terms)

    def discard(self, scope: str, key: str, terms: tuple[str, ...]) -> None:
        """Forget an entry, e.g. when its answer is gone from the exact cache."""
        if self._order.pop((scope, key), None) is None:
            return
        group = self._groups[(scope, terms)]
        del group[key]
        if not group:
            del self._groups[(scope, terms)]

    def could_answer(self, query: SemanticQuery) -> bool:
        """Whether some entry has the query's scope and key terms (no hit is possible otherwise)."""
        return (query.scope, query.terms) in self._groups

    def best(self, query: SemanticQuery, vector: np.ndarray, threshold: float) -> tuple[str, float] | None:
        """The most similar entry of the query's scope and key terms, at or above ``threshold``."""
        group = self._groups.get((query.scope, query.terms))
        if not group:
            return None
        found: tuple[str, float] | None = None
        for key, entry in group.items():
            similarity = float(entry @ vector)
            if similarity >= threshold and (found is None or similarity > found[1]):
                found = (key, similarity)
        return found


class SemanticCache:
    """The pipeline's hook: ``lookup`` after an exact miss, ``store`` after an answer was cached."""

    def __init__(
        self, config: SemanticConfig, cache: CacheBackend, embedder: Embedder, link: RedisLink | None = None
    ) -> None:
        self._config = config
        self._cache = cache
        self._embedder = embedder
        self._link = link
        self._read_from = "0-0"  # the last stream entry this process has read
        self.index = SemanticIndex(config.max_entries)

    async def start(self) -> None:
        await self._embedder.load()
        await self._catch_up()

    def wanted(self, options: RequestOptions, key_switch: bool | None = None) -> bool:
        """Whether the request takes part: its ``X-Sluice-Semantic`` header, else its
        proxy key's ``semantic`` switch, else the mode decides."""
        if options.no_cache or options.no_store:
            return False
        switch = options.semantic if options.semantic is not None else key_switch
        return switch if switch is not None else self._config.mode == "on"

    async def lookup(
        self, route_key: str, api: str, parts: tuple[str, dict[str, Any]], identity: str, compression: str
    ) -> tuple[SemanticQuery | None, SemanticHit | None]:
        """The request's query (to ``store`` once answered; None when it does not take part) and an
        earlier similar request's answer, if there is one. ``parts``: the request's last user turn
        as text, and the rest of it (``Surface.semantic_parts``), in the client's ``api``. Asked
        only for a request that is in (``wanted``)."""
        text, rest = parts
        if self._config.deterministic_only and (
            rest.get("temperature") != 0 or rest.get("tools") or rest.get("functions")
        ):
            return None, None
        normalized = normalize(text)
        query = SemanticQuery(_scope(route_key, api, rest, identity, compression), key_terms(normalized), normalized)
        await self._catch_up()
        vector = await self._vector(query) if self.index.could_answer(query) else None
        if vector is None:
            return query, None
        found = self.index.best(query, vector, self._config.threshold)
        if found is None:
            return query, None
        key, similarity = found
        try:
            answer = await self._cache.get(key)
        except CacheUnavailable:
            return query, None
        if answer is None:
            self.index.discard(query.scope, key, query.terms)
            return query, None
        return query, SemanticHit(answer, min(similarity, 1.0))

    async def store(self, query: SemanticQuery, key: str) -> None:
        """Remember that ``key``'s answer, now in the exact cache, answers ``query``."""
        vector = await self._vector(query)
        if vector is None:
            return
        self.index.add(query.scope, vector, query.terms, key)
        if self._link is None:
            return
        fields = {
            "s": query.scope,
            "k": key,
            "t": _TERMS_SEPARATOR.join(query.terms),
            "v": vector.astype("<f4").tobytes(),
        }
        try:
            await self._link.run(
                lambda redis: redis.xadd(STREAM, fields, maxlen=self._config.max_entries, approximate=True)
            )
        except RedisUnavailable:
            pass

    async def _vector(self, query: SemanticQuery) -> np.ndarray | None:
        """The query's vector, embedded once; None when the embedder cannot."""
        if query.vector is None:
            try:
                query.vector = await self._embedder.embed(query.text)
            except SluiceError:  # a provider's embeddings failed: go on without the semantic cache
                return None
        return query.vector

    async def _catch_up(self) -> None:
        """Add what other processes stored since the last read (Redis backend only)."""
        if self._link is None:
            return
        import numpy as np

        while True:
            try:
                batches = await self._link.run(
                    lambda redis: redis.xread({STREAM: self._read_from}, count=_READ_COUNT)
                )
            except RedisUnavailable:
                return
            if not batches:
                return
            entries = batches[0][1]
            for entry_id, fields in entries:
                terms = fields[b"t"].decode()
                self.index.add(
                    fields[b"s"].decode(),
                    np.frombuffer(fields[b"v"], dtype="<f4"),
                    tuple(terms.split(_TERMS_SEPARATOR)) if terms else (),
                    fields[b"k"].decode(),
                )
                self._read_from = entry_id.decode()
            if len(entries) < _READ_COUNT:
                return


def _scope(route_key: str, api: str, rest: dict[str, Any], identity: str, compression: str) -> str:
    """Everything that must be equal for two requests to share an answer: the request but its last
    user turn (``rest``), its client API (whose answers the exact cache keeps in that API's form),
    routed model, caller and compression."""
    canonical = {k: v for k, v in rest.items() if k not in IGNORED_FIELDS}
    material = orjson.dumps(
        [route_key, api, identity, compression, canonical], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    )
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def build_semantic_cache(
    config: Config, cache: CacheBackend, providers: dict[str, Provider], shared: SharedState | None
) -> SemanticCache:
    """The configured semantic cache, on the exact cache and, with Redis, the shared link."""
    from proxy.cache.embedder import ProviderEmbedder, StaticEmbedder

    settings = config.cache.semantic
    embedder: Embedder
    if settings.embedder.provider == "builtin":
        embedder = StaticEmbedder()
    else:
        embedder = ProviderEmbedder(providers[settings.embedder.provider], settings.embedder.model)
    return SemanticCache(settings, cache, embedder, shared.link if shared is not None else None)
