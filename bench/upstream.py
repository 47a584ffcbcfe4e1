"""A fake LLM upstream fast enough never to be the bottleneck of a benchmark.

It is a raw asyncio protocol on uvloop with httptools parsing: every answer is
precomputed bytes (bench/answers.py), so a request costs a parse and a write.
On this machine it serves ~3x what the same server written with ``aiohttp.web``
does (figures in bench/RESULTS.md), and it shares its core with wrk, so every
cycle counts.

    POST /v1/chat/completions   a fixed chat.completion, or with "stream": true
                                20 chat.completion.chunk events, a usage chunk
                                and ``data: [DONE]``
    POST /v1/responses          a fixed Responses ``response``, or its event
                                stream ending in response.completed
    POST /v1/messages           a fixed Anthropic ``message``, or its event
                                stream ending in message_stop
    GET  /__stats               {"calls": N, "outcomes": {...}}: API calls seen

``--delay-ms`` holds every answer back that long (time to first byte).
``--chaos 0.2 --seed 7`` makes that share of API calls go wrong, drawn from a
seeded generator: 429 (with Retry-After), 500, 503, a connection reset with no
answer, or a slow (200-1000 ms) but correct answer. Error bodies are OpenAI's
shape on every path.

HTTP pipelining is not supported; neither wrk nor the proxies use it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass

import httptools
import orjson
import uvloop

import answers

STATS_PATH = b"/__stats"
CHAOS_KINDS = ("429", "500", "503", "reset", "slow")
SLOW_SECONDS = (0.2, 1.0)


def _response(status: str, content_type: bytes, body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status.encode(),
        content_type,
        len(body),
        extra,
    )
    return head + body


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class Route:
    """One API's answers as HTTP/1.1 bytes: the JSON response, and the stream's parts."""

    json: bytes
    stream: list[bytes]


def _route(answer: answers.Answer) -> Route:
    """Each event its own chunk, so a stream arrives as separate events."""
    chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in answer.events]
    return Route(_response("200 OK", b"application/json", answer.body), [STREAM_HEAD, *chunks, b"0\r\n\r\n"])


CHAT_PATH = b"/v1/chat/completions"
ROUTES = {
    CHAT_PATH: _route(answers.CHAT),
    b"/v1/responses": _route(answers.RESPONSES),
    b"/v1/messages": _route(answers.MESSAGES),
}


def _error(status: str, kind: str, code: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps(
        {"error": {"message": f"fake upstream: {status}", "type": kind, "param": None, "code": code}}
    )
    return _response(status, b"application/json", body, extra)


ERRORS = {
    "429": _error(
        "429 Too Many Requests",
        "requests",
        "rate_limit_exceeded",
        b"Retry-After: 1\r\nretry-after-ms: 20\r\n",
    ),
    "500": _error("500 Internal Server Error", "server_error", "internal_error"),
    "503": _error("503 Service Unavailable", "server_error", "service_unavailable"),
}
NOT_FOUND = _error("404 Not Found", "invalid_request_error", "not_found")


class Upstream:
    """The shared state of all connections: settings, the chaos draw, call counts."""

    def __init__(self, delay: float, chaos: float, seed: int) -> None:
        self.delay = delay
        self.chaos = chaos
        self.random = random.Random(seed)
        self.outcomes: Counter[str] = Counter()

    def outcome(self) -> str:
        if self.chaos and self.random.random() < self.chaos:
            return self.random.choice(CHAOS_KINDS)
        return "ok"

    def stats(self) -> bytes:
        body = orjson.dumps({"calls": sum(self.outcomes.values()), "outcomes": self.outcomes})
        return _response("200 OK", b"application/json", body)


class Connection(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer with prebuilt bytes."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        route = ROUTES.get(self.url)
        if route is not None and self.parser.get_method() == b"POST":
            self.call(route, b"".join(self.body), keep_alive)
        elif self.url == STATS_PATH:
            self.send([self.upstream.stats()], keep_alive)
        else:
            self.send([NOT_FOUND], keep_alive)

    def call(self, route: Route, body: bytes, keep_alive: bool) -> None:
        outcome = self.upstream.outcome()
        self.upstream.outcomes[outcome] += 1
        if outcome == "reset":
            self.reset()
            return
        if outcome in ERRORS:
            parts = [ERRORS[outcome]]
        elif _wants_stream(body):
            parts = route.stream
        else:
            parts = [route.json]
        delay = self.upstream.random.uniform(*SLOW_SECONDS) if outcome == "slow" else self.upstream.delay
        if delay:
            asyncio.get_running_loop().call_later(delay, self.send, parts, keep_alive)
        else:
            self.send(parts, keep_alive)

    def send(self, parts: list[bytes], keep_alive: bool) -> None:
        """Write each part separately, so a stream arrives as separate events."""
        if self.transport is None or self.transport.is_closing():
            return
        for part in parts:
            self.transport.write(part)
        if not keep_alive:
            self.transport.close()

    def reset(self) -> None:
        """Drop the connection with a TCP RST, as a crashing load balancer would."""
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def _wants_stream(body: bytes) -> bool:
    """Parse JSON only when it may matter: most bodies never mention "stream"."""
    if b'"stream"' not in body:
        return False
    try:
        return orjson.loads(body).get("stream") is True
    except orjson.JSONDecodeError:
        return False


async def serve(port: int, delay_ms: float, chaos: float, seed: int) -> None:
    upstream = Upstream(delay_ms / 1000, chaos, seed)

    def factory() -> Connection:
        return Connection(upstream)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="hold every answer back this long")
    parser.add_argument("--chaos", type=float, default=0.0, help="share of API calls that go wrong (0-1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the chaos draw")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay_ms, args.chaos, args.seed))


if __name__ == "__main__":
    main()
