"""``Http1Client``'s own edge cases, against real loopback servers written here.

Each test's upstream is an asyncio server whose ``answer`` coroutine the test
writes: it sees each parsed request and writes whatever bytes the case needs
(chunked, read-until-close, resets, silence), so every wire shape is exact.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.config import ProviderConfig, Timeout
from proxy.errors import UpstreamConnectionError, UpstreamProtocolError, UpstreamReadTimeout
from proxy.http import upstream_client
from proxy import http1
from proxy.http1 import HIGH_WATER, Http1Client
from tests.test_http2 import certificates  # noqa: F401 - a fixture: a test CA and a certificate for 127.0.0.1/localhost

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes
    raw_head: bytes
    connection: int

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


Answer = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer; returns whether to keep the connection open for another request."""


async def ok(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    return True


@dataclass
class Upstream:
    answer: Answer = ok
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    arrived: asyncio.Queue[Request] = field(default_factory=asyncio.Queue)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                request = await _read_request(reader, number)
                if request is None:
                    break
                self.requests.append(request)
                self.arrived.put_nowait(request)
                if not await self.answer(request, reader, writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            self.disconnected.set()
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def _read_request(reader: asyncio.StreamReader, connection: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    line, *lines = head.decode().split("\r\n")[:-2]
    headers = {}
    for item in lines:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return Request(line, headers, body, head, connection)


async def wait_for_close(reader: asyncio.StreamReader) -> None:
    """Until the client closes (or resets) the connection."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


async def hang_or_ok(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """``/v1/hang`` never answers (until the client goes); anything else is ``OK``."""
    if request.target == "/v1/hang":
        await wait_for_close(reader)
        return False
    writer.write(OK)
    return True


def client_for(base_url: str, *, connect: float = 5.0, read: float = 5.0, max_connections: int = 10) -> Http1Client:
    config = ProviderConfig(
        name="p", type="openai", base_url=base_url, timeout=Timeout(connect=connect, read=read),
        max_connections=max_connections, http2=False,
    )
    client = upstream_client(config)
    assert isinstance(client, Http1Client)
    return client


async def until(condition: Callable[[], bool]) -> None:
    """Until a condition about the client's internal state holds (state, not time, is awaited)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.fixture
async def start():  # type: ignore[no-untyped-def]
    started: list[tuple[Upstream, list[Http1Client]]] = []

    async def start(answer: Answer = ok, **client_options: float) -> tuple[Upstream, Http1Client]:
        upstream = await Upstream(answer).start()
        client = client_for(f"{upstream.url()}/v1", **client_options)  # type: ignore[arg-type]
        started.append((upstream, [client]))
        return upstream, client

    yield start
    for upstream, clients in started:
        for client in clients:
            await client.aclose()
        await upstream.stop()


# -- the request on the wire, and keep-alive --


async def test_sequential_requests_share_one_kept_alive_connection(start) -> None:  # type: ignore[no-untyped-def]
    upstream, client = await start()
    for index in range(3):
        response = await client.request(
            "POST", f"{upstream.url()}/v1/chat/completions?n={index}", {"Authorization": "Bearer k"}, b'{"a":1}'
        )
        assert response.status == 200
        assert await response.read() == b'{"ok":true}'
    assert upstream.connections == 1
    assert [r.target for r in upstream.requests] == [f"/v1/chat/completions?n={i}" for i in range(3)]
    first = upstream.requests[0]
    assert first.line == "POST /v1/chat/completions?n=0 HTTP/1.1"
    assert first.headers == {"host": f"127.0.0.1:{upstream.port}", "authorization": "Bearer k", "content-length": "7"}
    assert first.body == b'{"a":1}'
    # Nothing the caller did not ask for: no User-Agent, no Accept-Encoding (answers stay uncompressed).
    assert b"user-agent" not in first.raw_head.lower() and b"accept-encoding" not in first.raw_head.lower()


async def test_get_has_no_content_length_and_headers_ignore_case(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nX-Twice: a\r\nX-Twice: b\r\nContent-Length: 0\r\n\r\n")
        return True

    upstream, client = await start(answer)
    response = await client.request("GET", f"{upstream.url()}/v1/models", {})
    assert response.status == 429
    assert response.headers.get("retry-after") == "3" and response.headers["Retry-After"] == "3"
    assert "RETRY-AFTER" in response.headers and response.headers.get("x-twice") == "a, b"
    assert await response.read() == b""
    assert "content-length" not in upstream.requests[0].headers


async def test_interim_1xx_answers_are_skipped(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)
        return True

    upstream, client = await start(answer)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert response.status == 200 and "link" not in response.headers
    assert await response.read() == b'{"ok":true}'


async def test_header_injection_is_refused(start) -> None:  # type: ignore[no-untyped-def]
    upstream, client = await start()
    with pytest.raises(ValueError):
        await client.request("POST", f"{upstream.url()}/v1/x", {"Authorization": "k\r\nX-Evil: 1"}, b"{}")
    assert client._slots == 0


# -- bodies --


async def test_chunked_body_streams_in_pieces_and_reuses_the_connection(start) -> None:  # type: ignore[no-untyped-def]
    more = asyncio.Event()

    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.target.endswith("/stream"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"6\r\ndata: \r\n5\r\none\n\n\r\n")
            await more.wait()
            writer.write(b"E\r\ndata: two\n\ndat\r\n8\r\na: three\r\n0\r\nX-Trailer: t\r\n\r\n")
        else:
            writer.write(OK)
        return True

    upstream, client = await start(answer)
    response = await client.request("POST", f"{upstream.url()}/v1/stream", {}, b"{}")
    batches = response.sse_batches()
    assert await anext(batches) == [b"one"]
    more.set()
    assert [batch async for batch in batches] == [[b"two"], [b"three"]]
    assert "x-trailer" not in response.headers
    response = await client.request("POST", f"{upstream.url()}/v1/again", {}, b"{}")
    assert await response.read() == b'{"ok":true}'
    assert upstream.connections == 1


async def test_gzip_and_deflate_answers_are_decoded_streamed_or_whole(start) -> None:  # type: ignore[no-untyped-def]
    events = b"".join(b"data: event %d\n\n" % n for n in range(50))
    packed = {"gzip": gzip.compress(events), "deflate": zlib.compress(events)}

    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        encoding = request.target.rsplit("/", 1)[1]
        if encoding == "br":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}")
            return True
        body = packed[encoding]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % encoding.encode())
        for start_at in range(0, len(body), 7):  # small pieces: a deflate block spans many reads
            piece = body[start_at : start_at + 7]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        return True

    upstream, client = await start(answer)
    for encoding in ("gzip", "deflate"):
        response = await client.request("POST", f"{upstream.url()}/v1/{encoding}", {}, b"{}")
        assert [data async for batch in response.sse_batches() for data in batch] == [b"event %d" % n for n in range(50)]
        response = await client.request("POST", f"{upstream.url()}/v1/{encoding}", {}, b"{}")
        assert await response.read() == events
    with pytest.raises(UpstreamProtocolError, match="content-encoding 'br'"):
        await client.request("POST", f"{upstream.url()}/v1/br", {}, b"{}")
    assert len(client._idle) == client._slots  # the refused answer freed its slot


async def test_body_without_length_is_read_until_the_server_closes(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        await writer.drain()
        writer.write(b"second part")
        return False  # close: that ends the body

    upstream, client = await start(answer)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert await response.read() == b"first part, second part"
    assert client._slots == 0 and not client._idle  # not kept alive
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert [line async for batch in response.line_batches() for line in batch] == [b"first part, second part"]
    assert upstream.connections == 2


async def test_a_slow_consumer_pauses_reading_and_still_gets_every_byte(start) -> None:  # type: ignore[no-untyped-def]
    size = HIGH_WATER * 8
    payload = bytes(range(256)) * (size // 256)

    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + payload)
        return True

    upstream, client = await start(answer)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    conn = response._conn
    await until(lambda: conn.paused)
    assert conn.buffered <= HIGH_WATER + 256 * 1024  # bounded by one read past the mark
    pieces = []
    while piece := await response._piece():
        pieces.append(piece)
    assert b"".join(pieces) == payload
    assert client._idle == [conn] and not conn.paused


# -- the pool --


async def test_pool_limit_holds_and_waiters_are_served_in_order(start) -> None:  # type: ignore[no-untyped-def]
    gates: dict[str, asyncio.Event] = {}

    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await gates.setdefault(request.target, asyncio.Event()).wait()
        writer.write(OK)
        return True

    upstream, client = await start(answer, max_connections=2)

    async def call(name: str) -> bytes:
        response = await client.request("POST", f"{upstream.url()}/v1/{name}", {}, b"{}")
        return await response.read()

    busy = [asyncio.create_task(call(name)) for name in ("busy1", "busy2")]
    for _ in busy:
        await upstream.arrived.get()
    waiting = []
    for index, name in enumerate(("w1", "w2", "w3")):
        waiting.append(asyncio.create_task(call(name)))
        await until(lambda: len(client._waiters) == index + 1)
    assert upstream.connections == 2 and client._slots == 2

    gates.setdefault("/v1/busy2", asyncio.Event()).set()
    assert (await upstream.arrived.get()).target == "/v1/w1"  # the first waiter got the freed connection
    gates.setdefault("/v1/busy1", asyncio.Event()).set()
    assert (await upstream.arrived.get()).target == "/v1/w2"
    gates.setdefault("/v1/w1", asyncio.Event()).set()
    assert (await upstream.arrived.get()).target == "/v1/w3"
    for name in ("w2", "w3"):
        gates.setdefault(f"/v1/{name}", asyncio.Event()).set()
    assert await asyncio.gather(*busy, *waiting) == [b'{"ok":true}'] * 5
    assert upstream.connections == 2 and client._slots == 2 and len(client._idle) == 2


async def test_a_cancelled_waiter_leaves_the_queue_without_taking_a_slot(start) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()

    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/v1/slow":
            await release.wait()
        writer.write(OK)
        return True

    upstream, client = await start(answer, max_connections=1)
    slow = asyncio.create_task(client.request("POST", f"{upstream.url()}/v1/slow", {}, b"{}"))
    await upstream.arrived.get()
    waiter = asyncio.create_task(client.request("POST", f"{upstream.url()}/v1/never", {}, b"{}"))
    await until(lambda: len(client._waiters) == 1)
    waiter.cancel()
    release.set()
    assert await (await slow).read() == b'{"ok":true}'
    response = await client.request("POST", f"{upstream.url()}/v1/next", {}, b"{}")
    assert await response.read() == b'{"ok":true}'
    assert [r.target for r in upstream.requests] == ["/v1/slow", "/v1/next"]
    assert client._slots == 1 and upstream.connections == 1


async def test_a_connection_the_server_closes_while_idle_leaves_the_pool(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        return False  # answer with keep-alive, then close the idle connection

    upstream, client = await start(answer)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert await response.read() == b'{"ok":true}'
    await until(lambda: not client._idle and client._slots == 0)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert await response.read() == b'{"ok":true}'
    assert upstream.connections == 2


async def test_a_connection_idle_past_the_keepalive_limit_is_closed(start, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(http1, "KEEPALIVE_IDLE", 0.1)
    upstream, client = await start()
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert await response.read() == b'{"ok":true}' and len(client._idle) == 1
    await upstream.disconnected.wait()  # the client let it go
    assert not client._idle and client._slots == 0


async def test_a_reused_connection_closed_before_answering_is_retried_once_fresh(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.connection == 1 and request.target == "/v1/second":
            return False  # the keep-alive race: closed without a byte of answer
        writer.write(OK)
        return True

    upstream, client = await start(answer)
    assert await (await client.request("POST", f"{upstream.url()}/v1/first", {}, b"{}")).read() == b'{"ok":true}'
    response = await client.request("POST", f"{upstream.url()}/v1/second", {}, b"{}")
    assert await response.read() == b'{"ok":true}'
    assert [(r.target, r.connection) for r in upstream.requests] == [
        ("/v1/first", 1), ("/v1/second", 1), ("/v1/second", 2)
    ]
    assert client._slots == 1


async def test_no_transparent_retry_on_a_fresh_connection_or_after_a_byte(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/v1/silent":
            return False
        if request.target == "/v1/partial":
            writer.write(b"HTTP/1.1 20")
            return False
        writer.write(OK)
        return True

    upstream, client = await start(answer)
    with pytest.raises(UpstreamConnectionError, match="upstream connection failed: connection closed by upstream"):
        await client.request("POST", f"{upstream.url()}/v1/silent", {}, b"{}")
    assert await (await client.request("POST", f"{upstream.url()}/v1/ok", {}, b"{}")).read() == b'{"ok":true}'
    with pytest.raises(UpstreamConnectionError):
        await client.request("POST", f"{upstream.url()}/v1/partial", {}, b"{}")  # on a reused connection
    assert [r.target for r in upstream.requests] == ["/v1/silent", "/v1/ok", "/v1/partial"]
    assert client._slots == 0


# -- failures --


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_reset_mid_body_is_a_connection_error(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b'{"id": "chatcmpl-')
        await writer.drain()
        _reset(writer)
        return False

    upstream, client = await start(answer)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    with pytest.raises(UpstreamConnectionError, match="^upstream connection failed: ") as caught:
        await response.read()
    assert "127.0.0.1" not in caught.value.message
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    pieces = []
    with pytest.raises(UpstreamConnectionError, match="^upstream stream broke: "):
        while piece := await response._piece():
            pieces.append(piece)
    assert b"".join(pieces) in (b"", b'{"id": "chatcmpl-')  # what arrived before the reset, if read in time
    assert client._slots == 0


async def test_refused_connection_names_host_and_port_but_never_the_query_or_headers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    client = client_for(f"http://127.0.0.1:{port}/v1beta")
    try:
        with pytest.raises(UpstreamConnectionError) as caught:
            await client.request("POST", f"http://127.0.0.1:{port}/v1beta/m:gen?key=SECRET", {"x-goog-api-key": "SECRET"}, b"{}")
        assert caught.value.message == f"upstream connection failed: cannot connect to 127.0.0.1:{port}"
        assert client._slots == 0
    finally:
        await client.aclose()


async def test_no_answer_within_the_read_timeout(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/v1/half":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await wait_for_close(reader)
        return False

    upstream, client = await start(answer, read=0.2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(UpstreamReadTimeout, match="^upstream timed out$"):
        await client.request("POST", f"{upstream.url()}/v1/silent", {}, b"{}")
    assert 0.2 <= loop.time() - began < 1.0
    response = await client.request("POST", f"{upstream.url()}/v1/half", {}, b"{}")
    with pytest.raises(UpstreamReadTimeout, match="^upstream read timed out$"):
        await response.read()
    response = await client.request("POST", f"{upstream.url()}/v1/half", {}, b"{}")
    assert await response._piece() == b"{"
    with pytest.raises(UpstreamReadTimeout, match="^upstream read timed out mid-stream$"):
        await response._piece()
    await until(lambda: upstream.closed == 3)  # every timed-out connection was closed
    assert client._slots == 0


async def test_a_stream_that_keeps_trickling_does_not_time_out(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(0.05)  # the pace under test: each gap is well inside the read timeout
            writer.write(b"x")
        return True

    upstream, client = await start(answer, read=0.2)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    assert await response.read() == b"x" * 8  # 0.4 s in all, twice the read timeout


# -- cancellation and abandoned answers --


async def test_cancelled_while_waiting_for_headers_frees_the_slot_and_closes_the_connection(start) -> None:  # type: ignore[no-untyped-def]
    upstream, client = await start(hang_or_ok, max_connections=1)
    task = asyncio.create_task(client.request("POST", f"{upstream.url()}/v1/hang", {}, b"{}"))
    await upstream.arrived.get()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await upstream.disconnected.wait()  # the upstream saw the connection go
    assert client._slots == 0 and not client._idle
    assert await (await client.request("POST", f"{upstream.url()}/v1/next", {}, b"{}")).read() == b'{"ok":true}'


async def test_closing_a_half_read_stream_closes_its_connection(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/v1/stream":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n")
            await wait_for_close(reader)
            return False
        writer.write(OK)
        return True

    upstream, client = await start(answer, max_connections=1)
    response = await client.request("POST", f"{upstream.url()}/v1/stream", {}, b"{}")
    assert await anext(response.sse_batches()) == [b"a"]
    response.close()
    await upstream.disconnected.wait()
    assert client._slots == 0
    assert await (await client.request("POST", f"{upstream.url()}/v1/next", {}, b"{}")).read() == b'{"ok":true}'


async def test_cancelled_mid_read_and_dropped_unread_answers_free_their_slots(start) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await wait_for_close(reader)
        return False

    upstream, client = await start(answer, max_connections=1)
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    reading = asyncio.create_task(response.read())
    await until(lambda: response._conn is not None and response._conn._waiter is not None)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await until(lambda: upstream.closed == 1)
    assert client._slots == 0
    response = await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")
    del response  # never read nor closed, e.g. its task was cancelled right after request()
    await until(lambda: upstream.closed == 2)
    assert client._slots == 0


async def test_aclose_closes_every_connection(start) -> None:  # type: ignore[no-untyped-def]
    upstream, client = await start(hang_or_ok)
    hanging = asyncio.create_task(client.request("POST", f"{upstream.url()}/v1/hang", {}, b"{}"))  # one busy
    await upstream.arrived.get()
    await (await client.request("POST", f"{upstream.url()}/v1/x", {}, b"{}")).read()  # one idle
    assert upstream.connections == 2 and len(client._idle) == 1
    await client.aclose()
    with pytest.raises(UpstreamConnectionError):
        await hanging
    await until(lambda: upstream.closed == 2)


# -- TLS --


async def test_https_with_sni_trusting_ssl_cert_file(certificates: dict[str, Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    upstream = await Upstream().start(context)
    untrusted = client_for(f"{upstream.url('https', 'localhost')}/v1")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    trusted = client_for(f"{upstream.url('https', 'localhost')}/v1")
    try:
        with pytest.raises(UpstreamConnectionError, match="certificate not trusted"):
            await untrusted.request("POST", f"{upstream.url('https', 'localhost')}/v1/x", {}, b"{}")
        for _ in range(2):
            response = await trusted.request("POST", f"{upstream.url('https', 'localhost')}/v1/x", {}, b"{}")
            assert await response.read() == b'{"ok":true}'
        assert names[-1] == "localhost" and upstream.connections == 1
        assert upstream.requests[0].headers["host"] == f"localhost:{upstream.port}"
    finally:
        await untrusted.aclose()
        await trusted.aclose()
        await upstream.stop()
