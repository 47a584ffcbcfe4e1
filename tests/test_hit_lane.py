"""The hit lane: repeated cache hits answered before ASGI (proxy/hit_lane.py, proxy/protocol.py).

End to end through the real server, with raw sockets where the HTTP
framing itself is the point (pipelining, HTTP/1.0, ``Expect``), and two
protocol-level tests for what a real client cannot time (a shutdown while
a request's body is still arriving; a failing lane).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
import uvicorn
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from uvicorn.server import ServerState

from proxy.cache.memory import MemoryCache
from proxy.hit_lane import MAX_BODY, HitLane
from proxy.protocol import LANE_STATE, SluiceProtocol
from proxy.telemetry import Telemetry
from proxy.telemetry.metrics import LATENCY_BUCKETS, observe_all
from tests.conftest import openai_config

CHAT = "/v1/chat/completions"
PER_REQUEST_HEADERS = {"x-request-id", "x-sluice-overhead-ms", "date"}
PER_REQUEST_LOG_FIELDS = {"request_id", "latency_ms", "overhead_ms", "timestamp"}


def body_for(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def post(proxy, body: dict[str, Any], **kwargs: Any) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{proxy.url}{CHAT}", json=body, **kwargs)


def cache_stats(proxy) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return httpx.get(f"{proxy.url}/stats").json()["cache"]


def learned(proxy, body: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
    """A miss, then two hits through the full path: the second time the same bytes hit teaches the lane."""
    assert post(proxy, body, **kwargs).headers["x-sluice-cache"] == "miss"
    assert post(proxy, body, **kwargs).headers["x-sluice-cache"] == "hit"
    assert post(proxy, body, **kwargs).headers["x-sluice-cache"] == "hit"


def sluice_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in PER_REQUEST_HEADERS}


@pytest.fixture
def proxy(start_proxy, fake_openai):  # type: ignore[no-untyped-def]
    return start_proxy(openai_config(fake_openai))


# -- raw HTTP/1.1 over one socket --


class RawConnection:
    """One client connection, written to as bytes and read back response by response."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def makefile(self, *args: Any) -> Any:  # http.client.HTTPResponse reads through this
        return _Borrowed(self.reader)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[http.client.HTTPResponse, bytes]:
        response = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        return response, response.read()

    def closed_by_server(self) -> bool:
        return self.reader.read(1) == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class _Borrowed:
    """The connection's reader, lent to one response: its ``close`` leaves the reader open."""

    def __init__(self, reader: io.BufferedReader) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def close(self) -> None:
        pass


def raw_post(body: bytes, headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    lines = [f"POST {CHAT} HTTP/{version}", "Host: sluice", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- end to end --


def test_a_repeat_is_answered_by_the_lane_exactly_as_the_full_path_answers_it(proxy, fake_openai) -> None:
    body = body_for("lane me")
    assert post(proxy, body).headers["x-sluice-cache"] == "miss"
    assert post(proxy, body).headers["x-sluice-cache"] == "hit"  # the full path: bytes noted
    full = post(proxy, body)  # the full path again, which teaches the lane
    assert cache_stats(proxy)["lane_hits"] == 0
    lane = post(proxy, body)
    assert cache_stats(proxy)["lane_hits"] == 1
    assert len(fake_openai.calls(CHAT)) == 1

    assert lane.status_code == 200 and lane.content == full.content
    assert sluice_headers(lane) == sluice_headers(full)
    assert lane.headers["x-sluice-cache"] == "hit" and lane.headers["x-sluice-attempts"] == "0"
    assert lane.headers["x-request-id"].startswith("req_") and float(lane.headers["x-sluice-overhead-ms"]) >= 0

    full_line, lane_line = (
        proxy.wait_for_log(lambda line, rid=response.headers["x-request-id"]: line.get("request_id") == rid)[0]
        for response in (full, lane)
    )
    drop = lambda line: {k: v for k, v in line.items() if k not in PER_REQUEST_LOG_FIELDS}  # noqa: E731
    assert drop(full_line) == drop(lane_line)
    assert lane_line["cache"] == "hit" and lane_line["status"] == 200 and lane_line["latency_ms"] >= 0

    stats = httpx.get(f"{proxy.url}/stats").json()
    assert stats["requests"]["total"] == 4 and stats["cache"]["hits"] == 3
    assert stats["tokens"]["saved_by_cache"] == 3 * 18
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'sluice_requests_total{cache="hit",model="gpt-4o-mini",provider="openai",status="200"} 3.0' in metrics
    assert 'sluice_request_duration_seconds_count{provider="openai"} 4.0' in metrics
    assert 'sluice_tokens_total{kind="saved_cache"} 54.0' in metrics


def test_streaming_repeats_replay_through_the_lane_for_the_sdk(proxy, fake_openai) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    messages = [{"role": "user", "content": "stream me"}]
    answers = []
    for _ in range(4):
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        answers.append((text, chunks[-1].usage.total_tokens if chunks[-1].usage else None))
    assert answers == [("echo: stream me", 18)] * 4
    assert cache_stats(proxy)["lane_hits"] == 1
    assert len(fake_openai.calls(CHAT)) == 1

    body = {"model": "gpt-4o-mini", "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    streams = []
    for _ in range(3):  # other bytes than the SDK's: the full path twice, then the lane
        with httpx.stream("POST", f"{proxy.url}{CHAT}", json=body, headers={"Authorization": "Bearer sk-client"}) as response:
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["transfer-encoding"] == "chunked"
            streams.append([line for line in response.iter_lines() if line])
    assert streams[0] == streams[1] == streams[2] and streams[2][-1] == "data: [DONE]"
    assert cache_stats(proxy)["lane_hits"] == 2


def test_embeddings_repeats_are_answered_by_the_lane(proxy, fake_openai) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    answers = [client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"]) for _ in range(4)]
    assert [a.headers["x-sluice-cache"] for a in answers] == ["miss", "hit", "hit", "hit"]
    vectors = [[item.embedding for item in a.parse().data] for a in answers]
    assert vectors[0] == vectors[1] == vectors[2] == vectors[3] and len(vectors[0]) == 2
    assert cache_stats(proxy)["lane_hits"] == 1
    assert len(fake_openai.calls("/embeddings")) == 1


def test_responses_repeats_take_the_full_path_as_the_surface_has_no_lane(proxy, fake_openai) -> None:
    """The lane holds only the routes of surfaces with ``hit_lane`` (chat, embeddings): a Responses
    hit must run its surface (stored responses, its own headers), however often it repeats."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    answers = [client.responses.with_raw_response.create(model="gpt-4o-mini", input="again", store=False) for _ in range(4)]
    assert [a.headers["x-sluice-cache"] for a in answers] == ["miss", "hit", "hit", "hit"]
    assert cache_stats(proxy)["lane_hits"] == 0


def test_the_lane_echoes_a_client_request_id_and_replaces_an_unfit_one(proxy) -> None:
    body = body_for("ids")
    learned(proxy, body)
    assert post(proxy, body, headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    too_long = "x" * 201
    assert post(proxy, body, headers={"X-Request-ID": too_long}).headers["x-request-id"].startswith("req_")
    assert cache_stats(proxy)["lane_hits"] == 2


def test_a_refreshed_entry_is_never_answered_with_the_old_one(proxy, fake_openai) -> None:
    body = body_for("refresh")
    learned(proxy, body)
    old_id = post(proxy, body).json()["id"]
    fresh = post(proxy, body, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-sluice-cache"] == "bypass" and fresh.json()["id"] != old_id
    assert post(proxy, body).json()["id"] == fresh.json()["id"]
    assert post(proxy, body).json()["id"] == fresh.json()["id"]
    assert len(fake_openai.calls(CHAT)) == 2


def test_clearing_the_cache_clears_the_lane(proxy, fake_openai) -> None:
    body = body_for("clear")
    learned(proxy, body)
    post(proxy, body)
    assert cache_stats(proxy)["lane_entries"] == 1
    assert httpx.post(f"{proxy.url}/admin/cache/clear").json() == {"cleared": 1}
    assert cache_stats(proxy)["lane_entries"] == 0
    assert post(proxy, body).headers["x-sluice-cache"] == "miss"


def test_an_expired_entry_is_not_answered_by_the_lane(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"ttl_seconds": 0.3}))
    body = body_for("expire in the lane")
    learned(proxy, body)
    pause = threading.Event()
    for _ in range(50):
        if post(proxy, body).headers["x-sluice-cache"] == "miss":
            break
        pause.wait(0.05)
    else:
        pytest.fail("entry never expired")
    assert cache_stats(proxy)["lane_hits"] >= 1, "the lane served the entry while it lived"


def test_requests_with_cache_headers_take_the_full_path(proxy) -> None:
    body = body_for("headers")
    learned(proxy, body)
    bad_ttl = post(proxy, body, headers={"X-Sluice-Cache-TTL": "soon"})
    assert bad_ttl.status_code == 400 and bad_ttl.json()["error"]["param"] == "X-Sluice-Cache-TTL"
    assert post(proxy, body, headers={"Cache-Control": "no-store"}).headers["x-sluice-cache"] == "bypass"
    bad_mode = post(proxy, body, headers={"X-Sluice-Compression": "extreme"})
    assert bad_mode.status_code == 400
    assert cache_stats(proxy)["lane_hits"] == 0


def test_keys_with_limits_are_counted_on_every_hit(start_proxy, fake_openai) -> None:
    keys = [{"name": "limited", "key": "sk-limited", "rpm": 3}, {"name": "free", "key": "sk-free"}]
    proxy = start_proxy(openai_config(fake_openai, auth={"keys": keys}))
    body = body_for("limits")
    limited = {"Authorization": "Bearer sk-limited"}
    statuses = [post(proxy, body, headers=limited).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    free = {"Authorization": "Bearer sk-free"}
    assert [post(proxy, body, headers=free).headers["x-sluice-cache"] for _ in range(4)] == ["miss", "hit", "hit", "hit"]
    assert cache_stats(proxy)["lane_hits"] == 1, "only the key without limits is served by the lane"
    assert post(proxy, body, headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert post(proxy, body).status_code == 401


def test_different_credentials_never_share_a_lane_entry(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, provider={"api_key": "", "pass_client_key": True}))
    body = body_for("mine")
    a = {"Authorization": "Bearer sk-a"}
    learned(proxy, body, headers=a)
    assert post(proxy, body, headers=a).headers["x-sluice-cache"] == "hit"
    assert post(proxy, body, headers={"Authorization": "Bearer sk-b"}).headers["x-sluice-cache"] == "miss"
    assert post(proxy, body, headers={"x-api-key": "sk-c"}).headers["x-sluice-cache"] == "miss"
    assert [call.headers["authorization"] for call in fake_openai.calls(CHAT)] == ["Bearer sk-a", "Bearer sk-b", "Bearer sk-c"]


def test_a_key_sent_as_x_api_key_is_never_served_to_a_caller_without_it(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, auth={"keys": [{"name": "team", "key": "sk-team"}]}))
    body = body_for("anthropic-style")
    learned(proxy, body, headers={"x-api-key": "sk-team"})
    assert post(proxy, body, headers={"x-api-key": "sk-team"}).headers["x-sluice-cache"] == "hit"
    assert cache_stats(proxy)["lane_hits"] == 1
    assert post(proxy, body).status_code == 401
    assert post(proxy, body, headers={"x-api-key": "sk-other"}).status_code == 401


def test_pipelined_requests_are_answered_in_order(proxy, fake_openai) -> None:
    cached = orjson.dumps(body_for("pipelined"))
    learned(proxy, orjson.loads(cached))
    connection = RawConnection(proxy.url)
    try:
        connection.send(
            raw_post(cached, {"X-Request-ID": "one"})
            + raw_post(orjson.dumps(body_for("not cached yet")), {"X-Request-ID": "two"})
            + raw_post(cached, {"X-Request-ID": "three"})
            + raw_post(cached, {"X-Request-ID": "four"})
        )
        answers = [connection.response() for _ in range(4)]
    finally:
        connection.close()
    assert [r.getheader("x-request-id") for r, _ in answers] == ["one", "two", "three", "four"]
    assert [r.getheader("x-sluice-cache") for r, _ in answers] == ["hit", "miss", "hit", "hit"]
    assert json.loads(answers[1][1])["choices"][0]["message"]["content"] == "echo: not cached yet"
    assert answers[0][1] == answers[2][1] == answers[3][1]


def test_http_1_0_and_connection_close_get_their_connection_closed(proxy) -> None:
    cached = orjson.dumps(body_for("close"))
    learned(proxy, orjson.loads(cached))
    for request in (raw_post(cached, version="1.0"), raw_post(cached, {"Connection": "close"})):
        connection = RawConnection(proxy.url)
        try:
            connection.send(request)
            response, body = connection.response()
            assert response.status == 200 and response.getheader("x-sluice-cache") == "hit"
            assert response.getheader("connection") == "close"
            assert json.loads(body)["choices"][0]["message"]["content"] == "echo: close"
            assert connection.closed_by_server()
        finally:
            connection.close()
    assert cache_stats(proxy)["lane_hits"] == 2


def test_a_body_in_several_pieces_and_expect_100_continue(proxy) -> None:
    cached = orjson.dumps(body_for("pieces"))
    learned(proxy, orjson.loads(cached))
    connection = RawConnection(proxy.url)
    try:
        request = raw_post(cached)
        head, body = request[: -len(cached)], cached
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.send(head)
        for start in range(0, len(body), 7):
            connection.send(body[start : start + 7])
        response, answer = connection.response()
        assert response.getheader("x-sluice-cache") == "hit"
        assert json.loads(answer)["choices"][0]["message"]["content"] == "echo: pieces"

        connection.send(raw_post(b"", {"Expect": "100-continue"}).replace(b"Content-Length: 0", f"Content-Length: {len(cached)}".encode()))
        assert connection.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert connection.reader.readline() == b"\r\n"
        connection.send(cached)
        response, answer = connection.response()
        assert response.status == 200 and response.getheader("x-sluice-cache") == "hit"
    finally:
        connection.close()
    assert cache_stats(proxy)["lane_hits"] == 1, "the piecewise body was the lane's; Expect takes the full path"


def test_bodies_larger_than_the_lane_takes_are_served_by_the_full_path(proxy, fake_openai) -> None:
    body = body_for("big " + "x" * MAX_BODY)
    learned(proxy, body)
    again = post(proxy, body)
    assert again.headers["x-sluice-cache"] == "hit" and again.json()["choices"][0]["message"]["content"].startswith("echo: big")
    assert cache_stats(proxy)["lane_hits"] == 0
    assert len(fake_openai.calls(CHAT)) == 1


def test_bytes_that_never_repeat_are_not_learned(proxy, fake_openai) -> None:
    answers = [post(proxy, body_for("one-offs", user=f"user-{n}")) for n in range(5)]  # `user` is not in the cache key
    assert [a.headers["x-sluice-cache"] for a in answers] == ["miss", "hit", "hit", "hit", "hit"]
    assert cache_stats(proxy)["lane_entries"] == 0, "each body was hit once: nothing worth preparing"
    assert len(fake_openai.calls(CHAT)) == 1


def test_with_the_lane_off_every_hit_takes_the_full_path(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"hit_lane": False}))
    body = body_for("no lane")
    assert [post(proxy, body).headers["x-sluice-cache"] for _ in range(4)] == ["miss", "hit", "hit", "hit"]
    assert "lane_hits" not in cache_stats(proxy)
    assert len(fake_openai.calls(CHAT)) == 1


# -- the protocol, driven directly --


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.closed.is_set()

    def close(self) -> None:
        self.closed.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def protocol_with(app: Any, lane: HitLane) -> tuple[SluiceProtocol, RecordingTransport]:
    config = uvicorn.Config(app, http=SluiceProtocol, lifespan="off", log_level="warning")
    config.load()
    protocol = SluiceProtocol(config, ServerState(), {LANE_STATE: lane}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


class EchoApp:
    """An ASGI app that records each body it reads and answers ``ok``."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.answered = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        self.received.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        self.answered.set()


async def test_shutdown_hands_a_held_request_to_uvicorn_which_finishes_it() -> None:
    app = EchoApp()
    protocol, transport = protocol_with(app, HitLane(MemoryCache(10, 10**6), Telemetry(), frozenset({CHAT.encode()})))
    body = orjson.dumps(body_for("arriving while we shut down"))
    request = raw_post(body)
    protocol.data_received(request[:-10])
    assert protocol.cycle is None, "held for the lane: uvicorn has not seen it"
    protocol.shutdown()
    assert protocol.cycle is not None and not protocol.cycle.keep_alive
    protocol.data_received(request[-10:])
    await asyncio.wait_for(transport.closed.wait(), 5)
    assert app.received == [body]
    assert bytes(transport.written).startswith(b"HTTP/1.1 200 OK") and bytes(transport.written).endswith(b"\r\n\r\nok")


async def test_a_failing_lane_sends_the_request_down_the_ordinary_path() -> None:
    class BrokenLane(HitLane):
        def lookup(self, *args: Any) -> None:  # type: ignore[override]
            raise RuntimeError("lane bug")

    app = EchoApp()
    protocol, transport = protocol_with(app, BrokenLane(MemoryCache(10, 10**6), Telemetry(), frozenset({CHAT.encode()})))
    body = orjson.dumps(body_for("still served"))
    protocol.data_received(raw_post(body))
    await asyncio.wait_for(app.answered.wait(), 5)
    assert app.received == [body] and bytes(transport.written).endswith(b"\r\n\r\nok")


def test_observing_in_bulk_renders_as_observing_one_by_one() -> None:
    values = [0.0004, 0.001, 0.0011, 0.003, 0.2, 7.5, 500.0, 0.0004]
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d", "d", ["p"], buckets=LATENCY_BUCKETS, registry=one).labels("x")
    h2 = Histogram("d", "d", ["p"], buckets=LATENCY_BUCKETS, registry=bulk).labels("x")
    for value in values:
        h1.observe(value)
    observe_all(h2, values)
    strip = lambda text: [line for line in text.splitlines() if "_created" not in line]  # noqa: E731
    assert strip(generate_latest(one).decode()) == strip(generate_latest(bulk).decode())


# -- uvicorn's internals and its options --


def test_the_installed_uvicorn_has_the_internals_the_lane_extends() -> None:
    """Fails on a uvicorn whose protocol changed shape: production then runs with the lane off
    (``hit_lane_off`` in the log), and this file's tests show what the lane needs from it."""
    from proxy.protocol import uvicorn_mismatch

    assert uvicorn_mismatch() is None, uvicorn_mismatch()


def test_a_uvicorn_without_those_internals_is_detected(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from proxy import protocol

    monkeypatch.setattr(protocol, "_READ", protocol._READ | {"renamed_attribute"})
    assert protocol._mismatch() == "HttpToolsProtocol no longer sets renamed_attribute"
    monkeypatch.setattr(protocol, "_EXTENDED", (*protocol._EXTENDED, "on_renamed"))
    assert protocol._mismatch() == "HttpToolsProtocol has no on_renamed"


def test_with_the_lane_off_uvicorns_own_protocol_serves(start_proxy, fake_openai) -> None:  # type: ignore[no-untyped-def]
    from proxy.config import parse_config
    from proxy.server import _uvicorn_options

    config = parse_config(yaml.safe_dump(openai_config(fake_openai, cache={"hit_lane": False})))
    assert _uvicorn_options(config)["http"] == "httptools"
    on = parse_config(yaml.safe_dump(openai_config(fake_openai)))
    assert _uvicorn_options(on)["http"] is SluiceProtocol


def test_the_lane_learns_and_answers_under_a_root_path(tmp_path, fake_openai) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from tests.fakes.server import free_port

    config = tmp_path / "sluice.yaml"
    config.write_text(yaml.safe_dump(openai_config(fake_openai)))
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "proxy.app:app_from_environment", "--factory", "--port", str(port),
        "--root-path", "/api", "--http", "proxy.protocol:SluiceProtocol", "--loop", "uvloop", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, "SLUICE_CONFIG": str(config)}, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "uvicorn did not start"
                time.sleep(0.05)

        proxy = SimpleNamespace(url=url)
        body = body_for("behind a path prefix")
        learned(proxy, body)
        assert post(proxy, body).headers["x-sluice-cache"] == "hit"
        assert cache_stats(proxy)["lane_hits"] == 1
    finally:
        process.terminate()
        process.wait(10)
