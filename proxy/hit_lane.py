"""The hit lane: repeated cache hits answered before ASGI, from bytes prepared once.

A cache hit through the full path costs ~100 µs of one core, against ~27 µs
for the fastest answer a bare ASGI app on uvicorn can give here (the
benchmark's "ceiling" row). Most of that is work whose result cannot change
between two byte-identical requests: JSON parsing and validation, routing,
the canonical cache key, the response headers, and uvicorn's task per
request with its ASGI messages.

So a hit served by the full path teaches the lane the answer it gave
(``learn``), once the same bytes have been hit twice (one-off requests would
cost the learning and push repeated ones out). The lane remembers it under
the request's exact bytes (path, ``Authorization``, ``X-Sluice-Compression``,
body). When
the same bytes come again, ``proxy.protocol`` asks the lane (``lookup``)
before starting any ASGI task, and the lane answers only if the cache still
holds the very entry it learned from, in this process and without I/O
(``CacheBackend.get_nowait``: the memory backend always, the Redis backend
while its near copy, ``proxy.cache.near``, hears Redis's invalidations): an
expired, evicted, cleared or refreshed entry sends the request down the
full path, which learns anew.

Only what the full path would answer the same way for the same bytes goes
in the lane: no ``Cache-Control`` or ``X-Sluice-Cache-TTL`` (those change
what the full path does), and only keys without rpm, tpm or budget limits
(a limited key must be counted and may be refused). Every lane answer gets its
own ``X-Request-ID`` and ``X-Sluice-Overhead-Ms``, its log line, its
metrics, its place in ``/stats`` and, with tracing on, its span, like any other
(content capture keeps the lane off: it keeps no request's body).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Scope

from proxy import tracing
from proxy.cache.base import CacheBackend, CachedAnswer
from proxy.fifo import BoundedFifo
from proxy.middleware import client_request_id, new_request_id
from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord
from proxy.telemetry.repeat import Repeat

MAX_BODY = 64 * 1024
"""Larger request bodies take the full path (uvicorn stops reading at this size until
the app asks for more, so the lane could not wait for them anyway)."""

MAX_BYTES = 32 * 1024 * 1024
"""What the lane's requests and prepared answers may hold in memory, all entries together."""

SEEN_MAX = 8192
"""Request bytes answered once by the full path, remembered by hash, to learn on their second hit."""

LaneKey = tuple[bytes, bytes | None, bytes | None, bytes]
"""Path, ``Authorization``, ``X-Sluice-Compression`` and body, exactly as received."""

_OFF_LANE_HEADERS = frozenset({b"cache-control", b"x-sluice-cache-ttl"})
_OVERHEAD_HEADER = b"x-sluice-overhead-ms"


@dataclass(slots=True)
class LaneEntry:
    """One learned answer: the cache entry it stands for and its response, ready to write."""

    cache_key: str
    answer: CachedAnswer
    head: bytes
    """Status line and the fixed headers, each ending in CRLF."""
    body: bytes
    """The body as it goes on the wire (chunk-framed for a stream)."""
    telemetry: Repeat
    """What each answer adds to the log, the metrics and /stats."""
    size: int


@dataclass(slots=True)
class LaneHit:
    entry: LaneEntry
    request_id: str
    headers: list[tuple[bytes, bytes]]  # the request's, for its trace context


class HitLane:
    """Learned answers by request bytes; answers a repeat while the cache entry lives."""

    def __init__(self, cache: CacheBackend, telemetry: Telemetry, paths: frozenset[bytes], max_bytes: int = MAX_BYTES) -> None:
        self.paths = paths
        """The routes whose requests the protocol holds for the lane: those of the surfaces with ``hit_lane``."""
        self._cache = cache
        self._telemetry = telemetry
        self._max_bytes = max_bytes
        self._entries: BoundedFifo[LaneKey, LaneEntry] = BoundedFifo(max_bytes=max_bytes, on_drop=self._dropped)
        self._body_sizes: Counter[int] = Counter()  # a first check that costs nothing per byte
        self._seen: BoundedFifo[int, None] = BoundedFifo(max_entries=SEEN_MAX)  # hashes of keys hit once
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- the full path teaches --

    def learn(
        self,
        scope: Scope,
        raw: bytes,
        cache_key: str,
        answer: CachedAnswer,
        headers: Iterable[tuple[bytes, bytes]],
        payload: bytes,
        stream: bool,
        record: RequestRecord,
    ) -> None:
        """Remember the hit the full path just served for this request (its ``headers`` as
        sent, ``payload`` unframed), if its bytes were hit before and the lane may answer them."""
        found = _request_key(_received_path(scope), scope["headers"], raw)
        if found is None:
            return
        key = found[0]
        if not self._seen_before(key):
            return
        lines = [b"HTTP/1.1 200 OK\r\n"]
        lines += [name + b": " + value + b"\r\n" for name, value in headers if name != _OVERHEAD_HEADER]
        if stream:
            lines.append(b"transfer-encoding: chunked\r\n")
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload)
        else:
            body = payload
        template = copy.copy(record)
        template.status, template.bytes_out, template.error_code = 200, len(payload), None
        template.body = template.span = None  # tracing's references: the lane keeps no request's body (the answer is the entry's)
        entry = LaneEntry(
            cache_key, answer, b"".join(lines), body, self._telemetry.repeat(template), len(key[3]) + len(body) + 512
        )
        if entry.size > self._max_bytes // 64:  # one entry may not crowd out the rest
            return
        self._entries.put(key, entry, entry.size)  # the oldest learned leave first
        self._body_sizes[len(key[3])] += 1

    def clear(self) -> None:
        self._entries.clear()
        self._body_sizes.clear()
        self._seen.clear()

    def _seen_before(self, key: LaneKey) -> bool:
        """Whether the full path answered these bytes before; notes them if not."""
        digest = hash(key)
        if digest in self._seen:
            self._seen.discard(digest)
            return True
        self._seen.put(digest, None)
        return False

    def _dropped(self, key: LaneKey) -> None:
        body_size = len(key[3])
        self._body_sizes[body_size] -= 1
        if not self._body_sizes[body_size]:
            del self._body_sizes[body_size]

    # -- the protocol asks --

    def lookup(self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> LaneHit | None:
        """The learned answer for these request bytes, if its cache entry still stands."""
        if len(body) not in self._body_sizes:
            return None
        found = _request_key(path, headers, body)
        if found is None:
            return None
        key, request_id = found
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._cache.get_nowait(entry.cache_key) is not entry.answer:
            self._entries.discard(key)  # expired, evicted, cleared or refreshed: the full path decides,
            self._seen.put(hash(key), None)  # and these bytes are known: its next hit teaches the lane
            return None
        return LaneHit(entry, client_request_id(request_id) or new_request_id(), headers)

    def response(self, hit: LaneHit, started: float, date_headers: bytes, keep_alive: bool) -> bytes:
        entry = hit.entry
        overhead = (time.perf_counter() - started) * 1000
        return b"".join((
            entry.head,
            date_headers,
            b"x-request-id: %b\r\nx-sluice-overhead-ms: %.3f\r\n" % (hit.request_id.encode("latin-1"), overhead),
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
            entry.body,
        ))

    def finish(self, hit: LaneHit, started: float) -> None:
        """The answer is written: log, count, time and trace it like any other request."""
        self.hits += 1
        latency = time.perf_counter() - started
        entry = hit.entry
        entry.telemetry.report(hit.request_id, latency)
        tracer = tracing.TRACING
        if tracer is not None:
            tracer.lane_hit(hit.headers, entry.telemetry.record, time.time_ns() - int(latency * 1e9))


def _received_path(scope: Scope) -> bytes:
    """The path as the client sent it, which is what ``lookup`` is given: uvicorn puts
    ``--root-path`` in front of ``raw_path``, and the protocol sees the request line bare."""
    raw: bytes = scope["raw_path"]
    root = scope.get("root_path")
    if root:
        prefix = root.encode("latin-1")
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def _request_key(
    path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[LaneKey, bytes | None] | None:
    """A request's lane key and its ``X-Request-ID``; None when a header keeps it off the lane."""
    authorization = api_key = compression = request_id = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"x-api-key":  # a credential too: requests differing in it must not share an entry
            api_key = value
        elif name == b"x-sluice-compression":
            compression = value
        elif name == b"x-request-id" and request_id is None:
            request_id = value
        elif name in _OFF_LANE_HEADERS:
            return None
    credential = authorization if authorization is not None else api_key
    return (path, credential, compression, body), request_id
