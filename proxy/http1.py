"""Sluice's own HTTP/1.1 upstream client: asyncio protocols and httptools, nothing else.

Why not aiohttp: on this machine its ``ClientSession.request`` plus reading
the response cost ~55-60 µs per proxied request, a quarter of Sluice's whole
budget; the features that cost them (cookie jars, redirects, tracing hooks,
a generic stream reader, per-request timeout objects) are ones a gateway
talking to one fixed upstream per pool never uses. This client does only
what Sluice needs, and measured several times cheaper (figures in the
commit that introduced it).

One ``Http1Client`` per provider (one scheme, host and port):

* a pool of at most ``max_connections`` keep-alive connections, reused
  last-in first-out; when all are busy, callers wait first-in first-out for
  up to ``timeout.pool`` seconds (then ``UpstreamBusy``, a 503), counted in
  ``waiting``. A connection the server closes while idle leaves the pool at
  once.
* connections are opened by ``proxy.egress``: through a forward proxy when
  one applies (``https://`` in a CONNECT tunnel, ``http://`` in absolute
  form), DNS cached, addresses raced (Happy Eyeballs), the provider's TLS
  settings; all of it within ``timeout.connect`` (``UpstreamConnectTimeout``).
* the request goes out as one write of bytes built once: request line,
  ``Host``, ``Content-Length`` (with a body), the caller's headers. No
  ``User-Agent``, no ``Accept-Encoding``: upstreams need not compress, and
  Sluice does not pay to inflate. A gzip or deflate answer sent anyway is
  decoded; other encodings are refused (``UpstreamProtocolError``).
* the response is parsed by httptools (llhttp): ``Content-Length``, chunked
  or read-until-close bodies; 1xx interim answers are skipped. Heads over
  ``MAX_HEAD_BYTES`` and whole bodies over ``MAX_BODY_BYTES`` are refused.
* one timer per connection enforces the read timeout (no byte for
  ``timeout.read`` seconds) and the whole call's ``timeout.total``, and
  closes connections idle in the pool for ``KEEPALIVE_IDLE`` seconds: data
  only stamps the time, and the timer, when it fires, compares that stamp
  and re-arms itself, so reading costs no timer handle per chunk.
* a reused connection that the server closed before any byte of the answer
  (the keep-alive race) is retried once on a fresh connection; nothing is
  retried once a byte of the answer arrived.
* a slow stream consumer pauses reading above ``HIGH_WATER`` buffered bytes.

The connection is owned by exactly one party at a time: the pool (idle), a
request (waiting for headers), or the ``Http1Response`` handed out. Whoever
owns it gives it back exactly once: to the pool when its answer was read
completely and the server keeps it alive, else closed, freeing its slot.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from proxy import tracing
from proxy.config import ProviderConfig
from proxy.egress import Dialer, ForwardProxy, forward_proxy, tls_context
from proxy.errors import (
    UpstreamBusy,
    UpstreamConnectionError,
    UpstreamConnectTimeout,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamReadTimeout,
)
from proxy.sse import MAX_EVENT_BYTES, StreamedBody

KEEPALIVE_IDLE = 15.0
"""Seconds an unused kept-alive connection stays in the pool (aiohttp's default, which Sluice had).

Servers close idle connections themselves, and the pool notices; this bounds
the ones whose close never arrives (a NAT or firewall that forgot them),
which would otherwise cost a request its whole read timeout.
"""

HIGH_WATER = 256 * 1024
"""Buffered body bytes above which a stream stops reading from its socket until consumed."""

_HEAD, _ANY, _ALL = 1, 2, 3
"""What a waiter waits for: the response head, any body bytes, the whole body."""

MAX_HEAD_BYTES = 64 * 1024
"""The largest response head (status line and headers) accepted from an upstream or a proxy."""

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The largest whole (non-streamed) answer accepted, after decoding; streams are bounded per event."""

_TIMEOUT = "timeout"
_TOTAL = "total"
"""The failure reasons a read timeout and ``timeout.total`` leave (every other reason is a short text)."""

_PROTOCOL_FAILURES = frozenset(
    {"malformed HTTP response", "unexpected protocol upgrade", "response head too large", "response body too large"}
)
"""Failure reasons that are the answer's fault, not the connection's: ``UpstreamProtocolError``."""

_DECODERS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
"""zlib window bits per ``Content-Encoding`` Sluice decodes."""

_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Request headers this client writes itself; a caller's copies are dropped."""

_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]")
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
"""Quote only what cannot appear in a request target (spaces, controls, non-ASCII)."""


class _Headers(dict):  # type: ignore[type-arg]
    """Response headers keyed by lower-case name; lookups ignore case."""

    __slots__ = ()

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


def _headers(raw: list[tuple[bytes, bytes]]) -> _Headers:
    headers = _Headers()
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = dict.get(headers, key)
        dict.__setitem__(headers, key, text if previous is None else f"{previous}, {text}")
    return headers


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the state of the exchange running on it."""

    __slots__ = (
        "_client",
        "_loop",
        "_read_timeout",
        "transport",
        "_parser",
        "closed",
        "idle",
        "exchanges",
        "_active",
        "_waiter",
        "_wait_for",
        "_raw_headers",
        "_interim",
        "head_done",
        "status",
        "body",
        "buffered",
        "complete",
        "keep_alive",
        "failure",
        "got_bytes",
        "_no_body",
        "paused",
        "_last",
        "_timer",
        "_deadline",
        "_head_bytes",
        "encoding",
    )

    def __init__(self, client: Http1Client, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._read_timeout = client._read_timeout
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle = False
        self.exchanges = 0
        self._active = False
        self._waiter: asyncio.Future[None] | None = None
        self._wait_for = _HEAD
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self.head_done = False
        self.status = 0
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.failure: str | None = None
        self.got_bytes = False
        self._no_body = False
        self.paused = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._head_bytes = 0
        self.encoding: bytes | None = None

    # -- the exchange, driven by Http1Client and Http1Response --

    def start(self, data: bytes, no_body: bool, deadline: float) -> asyncio.Future[None]:
        """Send a request; the future resolves when the head arrived or the exchange failed.

        ``deadline`` (loop time) ends the exchange, however busy, for ``timeout.total``.
        """
        self.exchanges += 1
        self._deadline = deadline
        self._head_bytes = 0
        self.encoding = None
        self._active = True
        self._raw_headers = []
        self._interim = False
        self.head_done = False
        self.body = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.failure = None
        self.got_bytes = False
        self._no_body = no_body
        self._arm()
        self.transport.write(data)
        return self.wait(_HEAD)

    def wait(self, what: int) -> asyncio.Future[None]:
        waiter = self._waiter = self._loop.create_future()
        self._wait_for = what
        return waiter

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.failure is None

    def finish(self) -> None:
        """The exchange is over and the connection healthy: ready for the pool."""
        self._last = self._loop.time()  # idle since
        self._active = False
        self._waiter = None
        self.body = []
        self._raw_headers = []
        if self.paused:
            self.resume()

    def abort(self) -> None:
        """Close at once, unread bytes and all (the server sees the connection go).

        A connection whose answer is complete (but not kept alive) closes politely.
        """
        self._active = False
        self._waiter = None
        if not self.closed:
            if self.complete and self.failure is None:
                self.transport.close()
            else:
                self.transport.abort()

    def resume(self) -> None:
        self.paused = False
        if not self.closed:
            self.transport.resume_reading()
            self._arm()

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self._raw_headers

    # -- timeouts: one timer per connection, re-armed only when it fires --
    #
    # ``_last`` is when the connection last saw activity: the request sent, a
    # byte read, reading resumed, or (idle) the moment it went back to the
    # pool. Data only stamps it; the timer, when it fires, compares the stamp
    # with the read timeout (exchange running) or the idle limit (in the pool),
    # and sets itself again. It fires at least every ``_idle_limit`` seconds,
    # so a connection gone idle is closed soon after its limit.

    def _arm(self) -> None:
        self._last = now = self._loop.time()
        due = now + self._read_timeout
        if self._deadline < due:
            due = self._deadline
        timer = self._timer
        if timer is None:
            self._timer = self._loop.call_at(min(due, now + self._client._idle_limit), self._on_timer)
        elif timer.when() > due:  # only with a read timeout (or total) shorter than the idle limit
            timer.cancel()
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        idle_limit = self._client._idle_limit
        if self.idle:
            if now - self._last >= idle_limit:
                self.transport.close()  # kept alive long enough unused: the pool lets it go
                return
            when = self._last + idle_limit
        elif self._active and not self.complete and self.failure is None:
            due = self._deadline
            if now >= due:
                self._expire(_TOTAL)
                return
            if not self.paused:  # a paused stream waits on its reader, not on the upstream
                read_due = self._last + self._read_timeout
                if now >= read_due:
                    self._expire(_TIMEOUT)
                    return
                due = min(due, read_due)
            when = min(due, now + idle_limit)
        else:
            when = now + idle_limit
        self._timer = self._loop.call_at(when, self._on_timer)

    def _expire(self, reason: str) -> None:
        self.failure = reason
        self._wake()
        self.transport.abort()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active or self.complete:
            # Bytes nobody asked for: this connection cannot be trusted with another request.
            self.keep_alive = False
            if not self._active:
                self.transport.abort()
            return
        self._last = self._loop.time()
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail_now("unexpected protocol upgrade")
        except httptools.HttpParserError:
            if self.complete:
                self.keep_alive = False  # junk after a complete answer
            else:
                self._fail_now("malformed HTTP response")
        self._wake()
        if (
            self.buffered > HIGH_WATER
            and not self.complete
            and not self.paused
            and self._wait_for != _ALL
            and not self.closed
        ):
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._client._lost(self)
        if self._active and not self.complete and self.failure is None:
            if exc is None and self.head_done and self._until_close():
                self.complete = True  # the body was delimited by the close
            else:
                self.failure = type(exc).__name__ if exc is not None else "connection closed by upstream"
            self._wake()

    def _until_close(self) -> bool:
        for name, _ in self._raw_headers:
            if name.lower() in (b"content-length", b"transfer-encoding"):
                return False
        return True

    def _fail_now(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        what = self._wait_for
        if (
            self.failure is not None
            or self.complete
            or (what == _HEAD and self.head_done)
            or (what == _ANY and self.buffered)
        ):
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers of a chunked body are not headers
            self._raw_headers.append((name, value))
            self._head_bytes += len(name) + len(value)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail_now("response head too large")
            elif len(name) == 16 and name.lower() == b"content-encoding":
                self.encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        if self.failure is not None:  # refused mid-head (too large): what follows in this read is not an answer
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            self._raw_headers = []
            self.encoding = None
            return
        self.status = status
        self.head_done = True
        if self._no_body:  # HEAD: whatever the headers say, nothing follows them
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if not self._no_body:
            self.body.append(body)
            self.buffered += len(body)
            if self.buffered > MAX_BODY_BYTES:  # a stream's reader drains (and pauses) long before
                self._fail_now("response body too large")

    def on_message_complete(self) -> None:
        if self.failure is not None:
            return
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive() and not self._no_body


class Http1Response(StreamedBody):
    """An upstream answer whose head arrived and whose body may not have yet.

    It owns its connection until the body is read to the end (which returns
    the connection to the pool) or ``close`` drops it.
    """

    __slots__ = ("_conn", "raw_headers", "_headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.raw_headers: list[tuple[bytes, bytes]] = conn.raw_headers()
        self._headers: _Headers | None = None
        self.status: int = conn.status

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive; built on first use (providers read headers only on errors)."""
        if self._headers is None:
            self._headers = _headers(self.raw_headers)
        return self._headers

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        try:
            if not conn.complete:
                if conn.paused:
                    conn.resume()
                while not conn.complete and conn.failure is None:
                    await conn.wait(_ALL)
                if not conn.complete:
                    raise _error(conn, "upstream read timed out", "upstream connection failed")
            body = conn.body
            data = body[0] if len(body) == 1 else b"".join(body)
        except BaseException:
            self.close()
            raise
        self.close()
        return data

    async def _piece(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        while True:
            body = conn.body
            if body:
                data = body[0] if len(body) == 1 else b"".join(body)
                conn.body = []
                conn.buffered = 0
                if conn.complete:
                    self.close()
                elif conn.paused:
                    conn.resume()
                return data
            if conn.complete:
                self.close()
                return b""
            if conn.failure is not None:
                self.close()
                raise _error(conn, "upstream read timed out mid-stream", "upstream stream broke")
            await conn.wait(_ANY)

    def close(self) -> None:
        """Give the connection back: to the pool when the answer is complete, else closed at once.

        Closing a half-read answer is how an abandoned stream reaches the
        upstream: it sees its connection go and can stop generating.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        client = conn._client
        if conn.reusable():
            conn.finish()
            client._give(conn)
        else:
            conn.abort()
            client._give(None)

    def __del__(self) -> None:
        # Dropped unread (e.g. its task was cancelled between request() and read()):
        # never leak the pool slot.
        if self._conn is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - the loop may be gone at interpreter exit
                pass


class _InflatedResponse(Http1Response):
    """An answer the upstream compressed unasked (gzip or deflate), inflated as it is read.

    A class of its own so that the answers nobody compressed, nearly all of
    them, pay nothing for it.
    """

    __slots__ = ("_decoder",)

    def __init__(self, conn: _Connection, decoder: Any) -> None:
        super().__init__(conn)
        self._decoder = decoder

    async def read(self) -> bytes:
        return _inflate(self._decoder, await super().read(), MAX_BODY_BYTES) + self._decoder.flush()

    async def _piece(self) -> bytes:
        try:
            while data := await super()._piece():
                if decoded := _inflate(self._decoder, data, MAX_EVENT_BYTES):
                    return decoded
        except UpstreamProtocolError:
            self.close()  # a stream that cannot be decoded is abandoned: its connection goes
            raise
        return self._decoder.flush()


def _response(conn: _Connection) -> Http1Response:
    """The answer whose head ``conn`` just read; raises before taking the connection when its encoding is unknown."""
    if conn.encoding is None:
        return Http1Response(conn)
    decoder = _decoder(conn.encoding)
    return Http1Response(conn) if decoder is None else _InflatedResponse(conn, decoder)


def _error(conn: _Connection, timed_out: str, broke: str) -> UpstreamFailure:
    """The exception for how ``conn``'s exchange failed, worded for where it was noticed."""
    failure = conn.failure or "connection closed by upstream"
    if failure == _TIMEOUT:
        return UpstreamReadTimeout(timed_out)
    if failure == _TOTAL:
        return UpstreamReadTimeout(f"upstream call took longer than timeout.total ({conn._client._total:g}s)")
    if failure in _PROTOCOL_FAILURES:
        return UpstreamProtocolError(f"upstream answer refused: {failure}")
    return UpstreamConnectionError(f"{broke}: {failure}")


def _decoder(encoding: bytes) -> Any:
    """A zlib stream for a ``Content-Encoding`` (None for identity); other encodings are refused."""
    if encoding in (b"", b"identity"):
        return None
    bits = _DECODERS.get(encoding)
    if bits is None:
        name = encoding.decode("latin-1")[:40]
        raise UpstreamProtocolError(f"upstream answered with content-encoding {name!r}, which Sluice does not decode")
    return zlib.decompressobj(bits)


def _inflate(decoder: Any, data: bytes, limit: int) -> bytes:
    try:
        decoded = decoder.decompress(data, limit)
    except zlib.error:
        raise UpstreamProtocolError("upstream sent a body its content-encoding does not decode") from None
    if decoder.unconsumed_tail:
        raise UpstreamProtocolError("upstream answer refused: response body too large")
    return decoded


class _TunnelRefused(OSError):
    """A forward proxy answered CONNECT with something other than 2xx."""


async def _tunnel(sock: socket.socket, authority: str, proxy: ForwardProxy) -> None:
    """Ask ``proxy`` over ``sock`` for a tunnel to ``authority``; returns once it is open."""
    loop = asyncio.get_running_loop()
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization:
        request += f"Proxy-Authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:  # nothing follows the answer until TLS starts
        piece = await loop.sock_recv(sock, 4096)
        if not piece:
            raise _TunnelRefused("closed the connection")
        head += piece
        if len(head) > MAX_HEAD_BYTES:
            raise _TunnelRefused("answered with an oversized head")
    status = head.partition(b"\r\n")[0].decode("latin-1")
    code = status.split(" ")[1] if status.count(" ") else ""
    if not (len(code) == 3 and code.startswith("2")):
        raise _TunnelRefused(f"answered {status[:80]!r}")


class Http1Client:
    """A pool of HTTP/1.1 connections to one upstream origin, built once in the app's lifespan."""

    def __init__(self, config: ProviderConfig) -> None:
        parts = urlsplit(config.base_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        self._name = config.name
        self._scheme = scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if scheme == "https" else 80)
        netloc = parts.netloc.rpartition("@")[2]
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host_header = netloc
        self._ssl = tls_context(config.tls) if scheme == "https" else None
        self._proxy = forward_proxy(config)
        self._tunnel = self._proxy is not None and scheme == "https"
        self._authority = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        # Through a proxy, plain HTTP names the whole URL in the request line (absolute form).
        self._prefix = f"{scheme}://{netloc}" if self._proxy is not None and not self._tunnel else ""
        self._proxy_auth = (
            f"Proxy-Authorization: {self._proxy.authorization}\r\n"
            if self._proxy is not None and self._proxy.authorization and not self._tunnel
            else ""
        )
        self._dialer = (
            Dialer(self._proxy.host, self._proxy.port) if self._proxy is not None else Dialer(self._host, self._port)
        )
        self._connect_timeout = config.timeout.connect
        self._read_timeout = config.timeout.read
        self._pool_timeout = config.timeout.pool
        self._total = config.timeout.total
        self._idle_limit = KEEPALIVE_IDLE
        self._limit = config.max_connections
        self.waiting = 0
        """Requests waiting for a free connection right now (the ``upstream pool waiting`` gauge)."""
        self._idle: list[_Connection] = []
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._slots = 0  # connections open or being opened, idle ones included
        self._conns: set[_Connection] = set()
        self._heads: dict[tuple[str, str], str] = {}
        self._closed = False

    # -- public surface --

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Http1Response:
        """Send a request and return once the status line and headers arrived."""
        data = self._encode(method, url, headers, body)
        if self._closed:
            raise UpstreamConnectionError("upstream connection failed: client closed")
        deadline = asyncio.get_running_loop().time() + self._total
        conn = await self._acquire()
        retried = False
        try:
            while True:
                if conn is None or conn.closed or conn.transport.is_closing():
                    conn = None  # its slot is ours: fill it with a new connection
                    conn = await self._open()
                await conn.start(data, method == "HEAD", deadline)
                if conn.head_done:
                    return _response(conn)
                failure = conn.failure
                if failure not in (_TIMEOUT, _TOTAL) and not conn.got_bytes and conn.exchanges > 1 and not retried:
                    # The server closed this kept-alive connection as we reused it: once more, fresh.
                    retried = True
                    conn.abort()
                    conn = None
                    continue
                raise _error(conn, "upstream timed out", "upstream connection failed")
        except BaseException:
            if conn is not None:
                conn.abort()
            self._give(None)
            raise

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            if not conn.closed:
                conn.transport.abort()  # an exchange still running sees it fail; its owner frees the slot
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectionError("upstream connection failed: client closed"))
        await asyncio.sleep(0)  # let the transports finish closing

    # -- the pool --

    async def _acquire(self) -> _Connection | None:
        """An idle connection, or None for a free slot to open one in; waits FIFO when neither."""
        idle = self._idle
        if idle:
            conn = idle.pop()
            conn.idle = False
            return conn
        if self._slots < self._limit:
            self._slots += 1
            return None
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        try:
            async with asyncio.timeout(self._pool_timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over just as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise UpstreamBusy(
                    f"No connection to provider {self._name!r} freed within timeout.pool ({self._pool_timeout:g}s): "
                    f"all {self._limit} are in use."
                ) from None
            raise
        finally:
            self.waiting -= 1

    def _give(self, conn: _Connection | None) -> None:
        """Return a slot: with a healthy connection in it, or empty (its connection closed)."""
        if conn is not None and conn.closed:
            conn = None
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._slots -= 1
        elif self._closed:
            conn.abort()
            self._slots -= 1
        else:
            conn.idle = True
            self._idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        """A connection closed; one that sat idle leaves the pool and frees its slot."""
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            try:
                self._idle.remove(conn)
            except ValueError:
                pass
            self._give(None)

    async def _open(self) -> _Connection:
        if self._closed:
            raise UpstreamConnectionError("upstream connection failed: client closed")
        loop = asyncio.get_running_loop()
        where = f"{self._host}:{self._port}"
        if self._proxy is not None:
            where += f" through proxy {self._proxy.host}:{self._proxy.port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                sock = await self._dialer.connect()
                try:
                    if self._tunnel:
                        await _tunnel(sock, self._authority, self._proxy)  # type: ignore[arg-type]
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self, loop),
                        sock=sock,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise UpstreamConnectTimeout(
                f"upstream connect timed out: no connection to {where} within timeout.connect ({self._connect_timeout:g}s)"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamConnectionError(
                f"upstream connection failed: cannot connect to {where} (TLS certificate not trusted)"
            ) from exc
        except _TunnelRefused as exc:
            raise UpstreamConnectionError(f"upstream connection failed: the proxy for {where} {exc}") from exc
        except OSError as exc:
            raise UpstreamConnectionError(f"upstream connection failed: cannot connect to {where}") from exc
        if self._closed:
            conn.abort()
            raise UpstreamConnectionError("upstream connection failed: client closed")
        self._conns.add(conn)
        return conn

    # -- the request's bytes --

    def _encode(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        key = (method, url)
        head = self._heads.get(key)
        if head is None:
            head = f"{method} {self._prefix}{self._target(url)} HTTP/1.1\r\nHost: {self._host_header}\r\n{self._proxy_auth}"
            if len(self._heads) >= 256:
                self._heads.clear()
            self._heads[key] = head
        lines = [f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _RESERVED]
        block = "".join(lines)
        if block.count("\n") != len(lines) or block.count("\r") != len(lines):
            raise ValueError("request header names and values must not contain CR or LF")
        block += tracing.upstream_header_lines()
        if body is None:
            return f"{head}{block}\r\n".encode()
        return f"{head}{block}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def _target(self, url: str) -> str:
        """The request target (path and query) of ``url``, which must be on this client's origin."""
        origin = self._origin
        if url.startswith(origin) and url[len(origin) : len(origin) + 1] in ("", "/", "?", "#"):
            rest = url[len(origin) :]
        else:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            if (parts.scheme.lower(), parts.hostname, port) != (self._scheme, self._host, self._port):
                raise ValueError("URL is not on this client's upstream")
            rest = parts.path + (f"?{parts.query}" if parts.query else "")
        rest = rest.partition("#")[0]
        if not rest.startswith("/"):
            rest = "/" + rest
        if _UNSAFE_TARGET.search(rest):
            rest = quote(rest, safe=_TARGET_SAFE)
        return rest
