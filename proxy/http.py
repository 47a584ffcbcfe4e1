"""The one upstream HTTP client seam: pooled aiohttp sessions, one per provider.

aiohttp is on the hot path because it measured ~5x faster than httpx here
(ARCHITECTURE.md, bench/RESULTS.md). Everything upstream goes through
``UpstreamClient``; providers never touch aiohttp directly, so the transport
can change without touching translation code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp

from proxy.config import ProviderConfig
from proxy.errors import UpstreamConnectionError, UpstreamReadTimeout

# Headers that describe one connection, not the message (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class UpstreamResponse:
    """An upstream answer whose body has not been read yet."""

    __slots__ = ("_response", "status", "headers")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except asyncio.TimeoutError as exc:
            raise UpstreamReadTimeout("upstream read timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: {_describe(exc)}") from exc
        finally:
            self._response.release()

    async def lines(self) -> AsyncIterator[bytes]:
        """Body lines as they arrive, line endings stripped."""
        content = self._response.content
        try:
            while True:
                line = await content.readline()
                if not line:
                    return
                yield line.rstrip(b"\r\n")
        except asyncio.TimeoutError as exc:
            raise UpstreamReadTimeout("upstream read timed out mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream stream broke: {_describe(exc)}") from exc

    async def sse_data(self) -> AsyncIterator[bytes]:
        """The ``data:`` payload of each server-sent event, multi-line data joined.

        Reads whatever has arrived and splits it on blank lines, rather than
        awaiting line by line: a stream is many small events.
        """
        content = self._response.content
        buffer = b""
        try:
            while True:
                piece = await content.readany()
                if not piece:
                    break
                buffer = buffer + piece if buffer else piece
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    data = _event_data(event)
                    if data is not None:
                        yield data
        except asyncio.TimeoutError as exc:
            raise UpstreamReadTimeout("upstream read timed out mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream stream broke: {_describe(exc)}") from exc
        data = _event_data(buffer)
        if data is not None:
            yield data

    def close(self) -> None:
        """Drop the connection: used when a stream is abandoned half-read."""
        self._response.close()


class UpstreamClient:
    """A pooled connection set to one provider, built once in the app's lifespan."""

    def __init__(self, config: ProviderConfig) -> None:
        connector = aiohttp.TCPConnector(
            limit=config.max_connections, limit_per_host=config.max_connections, ttl_dns_cache=300
        )
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeout.connect, sock_read=config.timeout.read
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> UpstreamResponse:
        """Send a request and return once the status line and headers arrived."""
        try:
            response = await self._session.request(method, url, headers=headers, data=body)
        except asyncio.TimeoutError as exc:
            raise UpstreamReadTimeout("upstream timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: {_describe(exc)}") from exc
        return UpstreamResponse(response)

    async def aclose(self) -> None:
        await self._session.close()


def _event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event; None for comments and empty events."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _describe(exc: BaseException) -> str:
    """A short reason without URLs' query strings (which may carry keys)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
