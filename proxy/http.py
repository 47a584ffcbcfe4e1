"""The one upstream HTTP client seam: one pooled client per provider.

Everything upstream goes through the client ``upstream_client`` builds;
providers never touch a transport directly (only the ``UpstreamClient`` and
``UpstreamResponse`` surfaces below), so the transport can change without
touching translation code.

Two clients sit behind that seam, chosen per provider by ``upstream_client``:
``Http1Client`` (proxy/http1.py: Sluice's own HTTP/1.1 client on asyncio
protocols and httptools) for speed, and ``Http2UpstreamClient`` (httpx with
h2) for ``https://`` upstreams with ``http2: true``, where many requests
multiplexed over a few TLS connections can be worth its higher cost per
request (measured in bench/HTTP2.md).

Why a client of our own on the HTTP/1.1 path: aiohttp, used here before, was
~5x faster than httpx, but its ``ClientSession.request`` plus reading the
answer still measured ~55-60 µs per proxied request on the bench machine, a
quarter of Sluice's whole cost per request. ``Http1Client`` does only what
Sluice needs and measured ~13 µs for the same work (bench/upstream_clients.py).
aiohttp stays a dependency for the bench floor (bench/floor.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any, Protocol

import h2.errors
import httpcore
import httpx

from proxy import tracing
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


class StreamedBody:
    """Splits a streamed body into server-sent events or lines, whichever client reads it.

    Both come in batches: everything complete in what one network read
    brought. A stream is many small events, and under load several arrive per
    read; handing them on together costs one hop through the layers above
    (provider, flight, client) per read instead of one per event.
    """

    __slots__ = ()

    async def _piece(self) -> bytes:
        """The next piece of the body as it arrived; empty at its end."""
        raise NotImplementedError

    async def sse_batches(self) -> AsyncIterator[list[bytes]]:
        """The ``data:`` payloads of server-sent events (multi-line data joined), per read."""
        buffer = b""
        while piece := await self._piece():
            buffer = buffer + piece if buffer else piece
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            batch = [data for event in events if (data := _event_data(event)) is not None]
            if batch:
                yield batch
        data = _event_data(buffer)
        if data is not None:
            yield [data]

    async def line_batches(self) -> AsyncIterator[list[bytes]]:
        """Body lines, line endings stripped, per read."""
        buffer = b""
        while piece := await self._piece():
            buffer = buffer + piece if buffer else piece
            *lines, buffer = buffer.split(b"\n")
            if lines:
                yield [line.rstrip(b"\r") for line in lines]
        if buffer:
            yield [buffer.rstrip(b"\r")]


def _event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event; None for comments and empty events."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class UpstreamResponse(Protocol):
    """What providers may use of an answer, whichever transport brought it."""

    status: int
    headers: Mapping[str, str]  # looked up without regard to case

    async def read(self) -> bytes: ...

    def sse_batches(self) -> AsyncIterator[list[bytes]]: ...

    def line_batches(self) -> AsyncIterator[list[bytes]]: ...

    def close(self) -> None: ...


class UpstreamClient(Protocol):
    """What providers may use of a client: ``Http1Client`` and ``Http2UpstreamClient`` both offer it."""

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# -- HTTP/2 ------------------------------------------------------------------
#
# Why a second client: Http1Client speaks only HTTP/1.1. Over TLS, HTTP/2 lets many
# requests to one provider share a few connections (one TLS handshake each, no
# wait for a free connection), which is what ``http2: true`` asks for. httpx
# with h2 provides it, at a per-request cost that bench/HTTP2.md measures; the
# factory below picks it only for ``https://`` upstreams.


class Http2UpstreamResponse(StreamedBody):
    """An upstream answer over HTTP/2 whose body has not been read yet.

    The same surface as ``Http1Response`` (``UpstreamResponse``), so providers
    cannot tell the transports apart.
    """

    __slots__ = ("_response", "_client", "_pieces", "status", "headers")

    def __init__(self, response: httpx.Response, client: Http2UpstreamClient) -> None:
        self._response = response
        self._client = client
        self._pieces: AsyncIterator[bytes] | None = None
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamReadTimeout("upstream read timed out") from exc
        except httpx.RequestError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: {_describe_httpx(exc)}") from exc
        finally:
            self.close()

    async def _piece(self) -> bytes:
        if self._pieces is None:
            self._pieces = self._response.aiter_bytes()
        try:
            return await anext(self._pieces, b"")
        except httpx.TimeoutException as exc:
            raise UpstreamReadTimeout("upstream read timed out mid-stream") from exc
        except httpx.RequestError as exc:
            raise UpstreamConnectionError(f"upstream stream broke: {_describe_httpx(exc)}") from exc

    def close(self) -> None:
        """Cancel the stream if it is unfinished: used when it is abandoned half-read.

        Only this stream ends; the connection stays up for the others. A fully
        read response is already released, and this costs nothing.
        """
        if not self._response.is_closed:
            _in_background(self._client.release(self._response))


class Http2UpstreamClient:
    """One httpx client per provider: requests multiplexed as streams over few TLS connections.

    Trust is the HTTP/1.1 client's: the system's CA store, or ``SSL_CERT_FILE``
    / ``SSL_CERT_DIR`` when set (``ssl.create_default_context``). Proxy
    variables in the environment are ignored, as ``Http1Client`` ignores them,
    so both transports reach an upstream the same way.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
            http1=True,  # for a TLS upstream that does not offer h2 by ALPN
            http2=True,
            network_backend=_AsyncioBackend(),
        )
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        transport._pool = self._pool  # httpx has no public way to choose the network backend
        self._client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            # Like Http1Client's: bounded connect and read, unbounded wait for a pooled connection.
            timeout=httpx.Timeout(connect=config.timeout.connect, read=config.timeout.read, write=None, pool=None),
        )
        del self._client.headers["User-Agent"]  # Http1Client sends none either

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Http2UpstreamResponse:
        """Send a request and return once the response headers arrived."""
        if tracing.TRACING is not None:
            headers = tracing.upstream_headers(headers)
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            _in_background(self.release())
            raise UpstreamReadTimeout("upstream timed out") from exc
        except httpx.RequestError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: {_describe_httpx(exc)}") from exc
        except asyncio.CancelledError:
            _in_background(self.release())
            raise
        return Http2UpstreamResponse(response, self)

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
                local = (local_address, 0) if local_address else None
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("connect timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def upstream_client(config: ProviderConfig) -> UpstreamClient:
    """HTTP/2 when the provider asks for it and TLS can negotiate it, else ``Http1Client``.

    A plain ``http://`` upstream is spoken to over HTTP/1.1 even with
    ``http2: true`` (CONTRACT §2): servers rarely offer cleartext HTTP/2, and
    the local upstreams found there (Ollama) gain nothing from multiplexing.
    """
    if config.http2 and config.base_url.startswith("https://"):
        return Http2UpstreamClient(config)
    from proxy.http1 import Http1Client  # here, not at the top: proxy.http1 builds on StreamedBody above

    return Http1Client(config)


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
    if isinstance(exc, httpx.ConnectError):
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
