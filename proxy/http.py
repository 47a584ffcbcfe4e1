"""The one upstream HTTP client seam: one pooled client per provider.

Everything upstream goes through the client ``upstream_client`` builds;
providers never touch a transport directly (only the ``UpstreamClient`` and
``UpstreamResponse`` surfaces below), so the transport can change without
touching translation code.

Two clients sit behind that seam, chosen per provider by ``upstream_client``:
``Http1Client`` (proxy/http1.py: Sluice's own HTTP/1.1 client on asyncio
protocols and httptools) for speed, and ``Http2UpstreamClient``
(proxy/http2.py: httpx with h2) for ``https://`` upstreams with ``http2:
true``, where many requests multiplexed over a few TLS connections can be
worth its higher cost per request (measured in bench/HTTP2.md). Both reach
their upstream through ``proxy.egress`` (forward proxy, TLS, connecting) and
split streams with ``proxy.sse``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from proxy.config import ProviderConfig
from proxy.http1 import Http1Client
from proxy.http2 import Http2UpstreamClient
from proxy.sse import Comment


class UpstreamResponse(Protocol):
    """What providers may use of an answer, whichever transport brought it."""

    status: int
    headers: Mapping[str, str]  # looked up without regard to case
    raw_headers: list[tuple[bytes, bytes]]  # as received: for scanning many without building ``headers``

    async def read(self) -> bytes: ...

    def sse_batches(self) -> AsyncIterator[list[bytes] | Comment]: ...

    def line_batches(self) -> AsyncIterator[list[bytes]]: ...

    def close(self) -> None: ...


class UpstreamClient(Protocol):
    """What providers may use of a client: ``Http1Client`` and ``Http2UpstreamClient`` both offer it."""

    @property
    def waiting(self) -> int:
        """Requests waiting for a free connection right now (a gauge; read at scrape time)."""
        ...

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def upstream_client(config: ProviderConfig) -> UpstreamClient:
    """HTTP/2 when the provider asks for it and TLS can negotiate it, else ``Http1Client``.

    A plain ``http://`` upstream is spoken to over HTTP/1.1 even with
    ``http2: true`` (CONTRACT §2): servers rarely offer cleartext HTTP/2, and
    the local upstreams found there (Ollama) gain nothing from multiplexing.
    """
    if config.http2 and config.base_url.startswith("https://"):
        return Http2UpstreamClient(config)
    return Http1Client(config)
