"""The HTTP/2 upstream client: httpx with h2, for ``https://`` upstreams with ``http2: true``.

Why a second client: ``Http1Client`` speaks only HTTP/1.1. Over TLS, HTTP/2
lets many requests to one provider share a few connections (one TLS
handshake each, no wait for a free connection), which is what ``http2:
true`` asks for. httpx with h2 provides it, at a per-request cost that
bench/HTTP2.md measures; ``proxy.http.upstream_client`` picks it only for
``https://`` upstreams.

It reaches the upstream as ``Http1Client`` does (``proxy.egress``): the same
forward proxy (a CONNECT tunnel), TLS settings and timeouts, with
``timeout.pool`` a 503 ``upstream_busy`` and ``timeout.total`` bounding the
call. httpx decodes a gzip or deflate answer itself.

httpx and httpcore internals it touches, and why (pinned in pyproject.toml,
checked by tests/test_http2.py::test_the_httpx_internals_used_are_there):
``AsyncHTTPTransport._pool``, to give httpcore a network backend on asyncio's
transports (httpx has no public way; without it, httpx builds its own pool
with the same settings on its default backend), the walk in ``release``
(without it, abandoned streams are only released, not reset), and the pool's
``_requests`` for ``waiting`` (without it, the gauge reads 0).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import h2.errors
import httpcore
import httpx

from proxy import tracing
from proxy.config import ProviderConfig
from proxy.egress import Dialer, forward_proxy, tls_context
from proxy.errors import (
    UpstreamBusy,
    UpstreamConnectionError,
    UpstreamConnectTimeout,
    UpstreamReadTimeout,
)
from proxy.sse import StreamedBody


class Http2UpstreamResponse(StreamedBody):
    """An upstream answer over HTTP/2 whose body has not been read yet.

    The same surface as ``Http1Response`` (``UpstreamResponse``), so providers
    cannot tell the transports apart.
    """

    __slots__ = ("_response", "_client", "_pieces", "_deadline", "status", "headers")

    def __init__(self, response: httpx.Response, client: Http2UpstreamClient, deadline: float) -> None:
        self._response = response
        self._client = client
        self._pieces: AsyncIterator[bytes] | None = None
        self._deadline = deadline
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self._response.headers.raw

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._response.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamReadTimeout("upstream read timed out") from exc
        except httpx.RequestError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: {_describe_httpx(exc)}") from exc
        except TimeoutError as exc:
            raise self._client.over_total() from exc
        finally:
            self.close()

    async def _piece(self) -> bytes:
        if self._pieces is None:
            self._pieces = self._response.aiter_bytes()
        try:
            async with asyncio.timeout_at(self._deadline):
                return await anext(self._pieces, b"")
        except httpx.TimeoutException as exc:
            raise UpstreamReadTimeout("upstream read timed out mid-stream") from exc
        except httpx.RequestError as exc:
            raise UpstreamConnectionError(f"upstream stream broke: {_describe_httpx(exc)}") from exc
        except TimeoutError as exc:
            self.close()
            raise self._client.over_total() from exc

    def close(self) -> None:
        """Cancel the stream if it is unfinished: used when it is abandoned half-read.

        Only this stream ends; the connection stays up for the others. A fully
        read response is already released, and this costs nothing.
        """
        if not self._response.is_closed:
            _in_background(self._client.release(self._response))


class Http2UpstreamClient:
    """One httpx client per provider: requests multiplexed as streams over few TLS connections.

    Proxy, trust and timeouts are ``Http1Client``'s (``proxy.egress``), so
    both transports reach an upstream the same way; httpx's own reading of
    the environment stays off (``trust_env=False``).
    """

    def __init__(self, config: ProviderConfig) -> None:
        context = tls_context(config.tls)
        options: dict[str, Any] = dict(
            ssl_context=context,
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
            http1=True,  # for a TLS upstream that does not offer h2 by ALPN
            http2=True,
            network_backend=_AsyncioBackend(),
        )
        proxy = forward_proxy(config)
        headers = {"Proxy-Authorization": proxy.authorization} if proxy is not None and proxy.authorization else None
        if proxy is None:
            self._pool: httpcore.AsyncConnectionPool = httpcore.AsyncConnectionPool(**options)
        else:  # https:// upstreams only: httpcore opens a CONNECT tunnel through it
            self._pool = httpcore.AsyncHTTPProxy(f"http://{proxy.host}:{proxy.port}", proxy_headers=headers, **options)
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        if hasattr(transport, "_pool"):  # httpx has no public way to choose the network backend
            transport._pool = self._pool
        else:  # httpx changed shape: its own pool, the same settings
            transport = httpx.AsyncHTTPTransport(
                verify=context,
                http2=True,
                limits=httpx.Limits(max_connections=config.max_connections),
                proxy=None if proxy is None else httpx.Proxy(f"http://{proxy.host}:{proxy.port}", headers=headers),
                trust_env=False,
            )
        self._name = config.name
        self._pool_timeout = config.timeout.pool
        self._total = config.timeout.total
        self._client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            timeout=httpx.Timeout(
                connect=config.timeout.connect, read=config.timeout.read, write=None, pool=config.timeout.pool
            ),
        )
        del self._client.headers["User-Agent"]  # Http1Client sends none either
        del self._client.headers["Accept-Encoding"]  # nor asks for compression (httpx decodes it when sent anyway)

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection (or a stream slot) right now; read when metrics are scraped."""
        return sum(1 for request in getattr(self._pool, "_requests", ()) if request.is_queued())

    def over_total(self) -> UpstreamReadTimeout:
        return UpstreamReadTimeout(f"upstream call took longer than timeout.total ({self._total:g}s)")

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Http2UpstreamResponse:
        """Send a request and return once the response headers arrived."""
        if tracing.TRACING is not None:
            headers = tracing.upstream_headers(headers)
        request = self._client.build_request(method, url, headers=headers, content=body)
        deadline = asyncio.get_running_loop().time() + self._total
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except httpx.PoolTimeout as exc:
            raise UpstreamBusy(
                f"No connection to provider {self._name!r} freed within timeout.pool ({self._pool_timeout:g}s)."
            ) from exc
        except httpx.ConnectTimeout as exc:
            raise UpstreamConnectTimeout(f"upstream connect timed out: {_describe_httpx(exc)}") from exc
        except httpx.TimeoutException as exc:
            _in_background(self.release())
            raise UpstreamReadTimeout("upstream timed out") from exc
        except httpx.RequestError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: {_describe_httpx(exc)}") from exc
        except TimeoutError as exc:
            _in_background(self.release())
            raise self.over_total() from exc
        except asyncio.CancelledError:
            _in_background(self.release())
            raise
        return Http2UpstreamResponse(response, self, deadline)

    async def release(self, response: httpx.Response | None = None) -> None:
        """Close ``response``, then reset every stream nobody reads any more (RST_STREAM CANCEL).

        httpcore 1.0 forgets an abandoned HTTP/2 stream without telling the
        server (encode/httpcore#943, closed as wontfix; #1098): the upstream
        would go on generating, and billing, an answer nobody reads, which the
        contract's client-disconnect rule forbids, and its late frames would
        eat the shared connection's flow-control window. h2 can reset a
        stream; httpcore keeps its connections private, hence the attribute
        walk. A stream h2 still holds open but httpcore no longer tracks is
        one that was abandoned, before or after its headers arrived. Should
        httpcore change shape, the walk finds nothing: streams are then only
        released, as before.
        """
        if response is not None:
            await response.aclose()
        for pooled in self._pool.connections:
            connection = getattr(pooled, "_connection", None)
            h2_state, tracked = getattr(connection, "_h2_state", None), getattr(connection, "_events", None)
            if h2_state is None or tracked is None:
                continue  # not connected yet, or HTTP/1.1 (which closes an abandoned connection)
            streams = list(h2_state.streams.items())
            abandoned = [sid for sid, stream in streams if not stream.closed and sid not in tracked]
            try:
                for stream_id in abandoned:
                    h2_state.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                if abandoned:
                    await connection._write_outgoing_data(_FLUSH)
            except Exception:  # noqa: BLE001 - the connection is gone, and its streams with it
                continue

    async def aclose(self) -> None:
        await self._client.aclose()


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection on asyncio's own transport (uvloop's, in C, under Sluice), for httpcore.

    Why not httpcore's default (anyio): its TLS runs in Python over memory
    BIOs, and a task cancelled between encrypting and sending loses TLS
    records. On HTTP/2 that breaks the connection every other request shares:
    one client hanging up fails its neighbours (tests/test_http2.py shows
    it). Here a write hands all its bytes to the transport at
    once, and a read takes nothing from the buffer until it returns, so
    cancelling either at any point leaves the connection intact. It is also
    cheaper per request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("read timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._writer.is_closing():
            raise httpcore.WriteError("connection closed")
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("write timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> _AsyncioStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("TLS handshake timed out") from exc
        except OSError as exc:  # ssl.SSLError included
            raise httpcore.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of an idle HTTP/1.1 connection: has the server closed it?
            return self._reader.at_eof() or self._writer.is_closing()
        return self._writer.get_extra_info(info)


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections opened by ``proxy.egress.Dialer``: DNS cached, Happy Eyeballs."""

    def __init__(self) -> None:
        self._dialers: dict[tuple[str, int], Dialer] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> _AsyncioStream:
        try:
            async with asyncio.timeout(timeout):
                dialer = self._dialers.get((host, port))
                if dialer is None:
                    dialer = self._dialers[(host, port)] = Dialer(host, port)
                reader, writer = await asyncio.open_connection(sock=await dialer.connect())
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("connect timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_FLUSH = httpcore.Request("POST", "https://sluice.invalid/", extensions={"timeout": {"write": 5.0}})
"""What httpcore's write path reads its timeout from, when a reset is flushed outside any request."""

_background: set[asyncio.Task[None]] = set()


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run cleanup the caller cannot wait for (a synchronous ``close``, a cancelled task)."""
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)  # the loop keeps only a weak reference
    task.add_done_callback(_background.discard)


def _describe_httpx(exc: httpx.RequestError) -> str:
    """A short reason without URLs' query strings (which may carry keys)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        url = exc.request.url
        where = f"cannot connect to {url.host}:{url.port or 443}"
        return where + (" (TLS certificate not trusted)" if _caused_by(exc, ssl.SSLCertVerificationError) else "")
    return type(exc).__name__


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
