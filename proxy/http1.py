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
  last-in first-out; when all are busy, callers wait first-in first-out
  without a time limit (aiohttp's semantics). A connection the server closes
  while idle leaves the pool at once.
* the request goes out as one write of bytes built once: request line,
  ``Host``, ``Content-Length`` (with a body), the caller's headers. No
  ``User-Agent``, no ``Accept-Encoding``, so upstreams do not compress.
* the response is parsed by httptools (llhttp): ``Content-Length``, chunked
  or read-until-close bodies; 1xx interim answers are skipped.
* one timer per connection enforces the read timeout (no byte for
  ``timeout.read`` seconds) and closes connections idle in the pool for
  ``KEEPALIVE_IDLE`` seconds: data only stamps the time, and the timer, when
  it fires, compares that stamp and re-arms itself, so reading costs no
  timer handle per chunk.
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
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from proxy import tracing
from proxy.config import ProviderConfig
from proxy.errors import UpstreamConnectionError, UpstreamReadTimeout
from proxy.http import StreamedBody

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

_TIMEOUT = "timeout"
"""The failure reason a read timeout leaves (every other reason is a short text)."""

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

    # -- the exchange, driven by Http1Client and Http1Response --

    def start(self, data: bytes, no_body: bool) -> asyncio.Future[None]:
        """Send a request; the future resolves when the head arrived or the exchange failed."""
        self.exchanges += 1
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
        timer = self._timer
        if timer is None:
            self._timer = self._loop.call_at(now + min(self._read_timeout, self._client._idle_limit), self._on_timer)
        elif timer.when() > now + self._read_timeout:  # only with a read timeout shorter than the idle limit
            timer.cancel()
            self._timer = self._loop.call_at(now + self._read_timeout, self._on_timer)

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
        elif self._active and not self.complete and not self.paused and self.failure is None:
            due = self._last + self._read_timeout
            if now >= due:
                self.failure = _TIMEOUT
                self._wake()
                self.transport.abort()
                return
            when = min(due, now + idle_limit)
        else:
            when = now + idle_limit
        self._timer = self._loop.call_at(when, self._on_timer)

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

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            self._raw_headers = []
            return
        self.status = status
        self.head_done = True
        if self._no_body:  # HEAD: whatever the headers say, nothing follows them
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if not self._no_body:
            self.body.append(body)
            self.buffered += len(body)

    def on_message_complete(self) -> None:
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

    __slots__ = ("_conn", "_raw", "_headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self._raw = conn.raw_headers()
        self._headers: _Headers | None = None
        self.status: int = conn.status

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive; built on first use (providers read headers only on errors)."""
        if self._headers is None:
            self._headers = _headers(self._raw)
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
                    if conn.failure == _TIMEOUT:
                        raise UpstreamReadTimeout("upstream read timed out")
                    raise UpstreamConnectionError(f"upstream connection failed: {conn.failure}")
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
                failure = conn.failure
                self.close()
                if failure == _TIMEOUT:
                    raise UpstreamReadTimeout("upstream read timed out mid-stream")
                raise UpstreamConnectionError(f"upstream stream broke: {failure}")
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


class Http1Client:
    """A pool of HTTP/1.1 connections to one upstream origin, built once in the app's lifespan."""

    def __init__(self, config: ProviderConfig) -> None:
        parts = urlsplit(config.base_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        self._scheme = scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if scheme == "https" else 80)
        netloc = parts.netloc.rpartition("@")[2]
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host_header = netloc
        self._ssl = ssl.create_default_context() if scheme == "https" else None
        self._connect_timeout = config.timeout.connect
        self._read_timeout = config.timeout.read
        self._idle_limit = KEEPALIVE_IDLE
        self._limit = config.max_connections
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
        if tracing.TRACING is not None:
            headers = tracing.upstream_headers(headers)
        data = self._encode(method, url, headers, body)
        if self._closed:
            raise UpstreamConnectionError("upstream connection failed: client closed")
        conn = await self._acquire()
        retried = False
        try:
            while True:
                if conn is None or conn.closed or conn.transport.is_closing():
                    conn = None  # its slot is ours: fill it with a new connection
                    conn = await self._open()
                await conn.start(data, method == "HEAD")
                if conn.head_done:
                    return Http1Response(conn)
                failure = conn.failure
                if failure != _TIMEOUT and not conn.got_bytes and conn.exchanges > 1 and not retried:
                    # The server closed this kept-alive connection as we reused it: once more, fresh.
                    retried = True
                    conn.abort()
                    conn = None
                    continue
                if failure == _TIMEOUT:
                    raise UpstreamReadTimeout("upstream timed out")
                raise UpstreamConnectionError(f"upstream connection failed: {failure}")
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
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over just as we were cancelled: pass it on
            raise

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
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise UpstreamReadTimeout("upstream timed out") from exc
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamConnectionError(
                f"upstream connection failed: cannot connect to {self._host}:{self._port} (TLS certificate not trusted)"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectionError(
                f"upstream connection failed: cannot connect to {self._host}:{self._port}"
            ) from exc
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
            head = f"{method} {self._target(url)} HTTP/1.1\r\nHost: {self._host_header}\r\n"
            if len(self._heads) >= 256:
                self._heads.clear()
            self._heads[key] = head
        lines = [f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _RESERVED]
        block = "".join(lines)
        if block.count("\n") != len(lines) or block.count("\r") != len(lines):
            raise ValueError("request header names and values must not contain CR or LF")
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
