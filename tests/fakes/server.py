"""A real HTTP server on a loopback port, run in a background thread, and the
scripting vocabulary the fake upstreams share.

A test queues ``Reply`` objects to script the next answers (status, headers,
delays, streams cut short, hangs, resets); with nothing queued a fake answers
like the real service would. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Raw(bytes):
    """A scripted stream item sent as it is, unframed: an SSE comment such as ``b": ping\\n\\n"``."""


@dataclass
class Reply:
    """One scripted answer. Fields combine: e.g. ``delay`` then a cut stream."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    gate: threading.Event | None = None
    chunks: list[Any] | None = None
    chunk_delay: float = 0.0
    cut_after: int | None = None
    reset: bool = False


@dataclass(frozen=True)
class ReportedUsage:
    """Usage a fake reports, in its own API's fields, instead of its own count, when a test sets
    ``fake.report_usage``: ``prompt`` input tokens in all, of which ``cached`` were read from the
    provider's prompt cache and ``written`` to it. A provider that reports no cache writes
    (Gemini) or no caching at all (Ollama) leaves those out, as the real one does."""

    prompt: int
    cached: int
    written: int
    completion: int


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class StreamCut(Exception):
    """Raised inside a response to make uvicorn drop the connection mid-body."""


class FakeServer:
    """Base for fake upstreams: subclasses implement ``default_reply``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.report_usage: ReportedUsage | None = None
        self.port = free_port(host)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- test-facing API --

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def reset(self) -> None:
        self.replies.clear()
        self.requests.clear()
        self.disconnects = 0
        self.disconnected.clear()
        self.report_usage = None

    def calls(self, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if path_part in r.path]

    def start(self) -> FakeServer:
        config = uvicorn.Config(
            self, host=self.host, port=self.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread:
            self._thread.join(timeout=5)

    # -- subclass API --

    async def default_reply(self, request: Request, body: bytes) -> Response:
        raise NotImplementedError

    def stream_frame(self, item: Any) -> bytes:
        """How one scripted chunk is framed on the wire (SSE by default)."""
        data = item if isinstance(item, bytes) else orjson.dumps(item)
        return b"data: " + data + b"\n\n"

    def stream_end(self) -> bytes:
        return b""

    stream_media_type = "text/event-stream"

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        with self._lock:
            self.requests.append(
                Recorded(
                    scope["method"],
                    scope["path"],
                    scope.get("query_string", b"").decode(),
                    {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                    body,
                )
            )
            reply = self.replies.popleft() if self.replies else None
        if reply is None:
            response = await self.default_reply(request, body)
        else:
            response = await self._scripted(request, reply)
            if response is None:
                return
        await response(scope, receive, send)

    async def _wait_disconnect(self, request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self._note_disconnect()
                return

    def _note_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected.set()

    async def _scripted(self, request: Request, reply: Reply) -> Response | None:
        if reply.gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, reply.gate.wait, 30)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.hang:
            await self._wait_disconnect(request)
            return None
        if reply.reset:
            return _ResetResponse(reply.status, reply.headers)
        if reply.chunks is not None:
            return StreamingResponse(
                self._stream(reply), status_code=reply.status, headers=reply.headers, media_type=self.stream_media_type
            )
        content = reply.body if reply.body is not None else orjson.dumps(reply.json)
        return Response(content, status_code=reply.status, headers=reply.headers, media_type="application/json")

    async def _stream(self, reply: Reply):  # type: ignore[no-untyped-def]
        try:
            for index, item in enumerate(reply.chunks or ()):
                if reply.cut_after is not None and index >= reply.cut_after:
                    raise StreamCut
                if reply.chunk_delay and index:
                    await asyncio.sleep(reply.chunk_delay)
                yield item if isinstance(item, Raw) else self.stream_frame(item)
            end = self.stream_end()
            if end:
                yield end
        except (asyncio.CancelledError, GeneratorExit):
            self._note_disconnect()
            raise


class _ResetResponse:
    """Promises a long body, sends a few bytes, then drops the connection."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"10000")]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-', "more_body": True})
        raise StreamCut
