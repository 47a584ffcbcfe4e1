"""HTTP/2 to TLS upstreams, end to end: the real server, a fake OpenAI upstream over TLS, the official SDK.

The fake is the usual ``FakeOpenAI`` ASGI app served by hypercorn, which
offers ``h2`` and ``http/1.1`` by ALPN (and cleartext HTTP/2 to a client that
asks), so the HTTP version of each request is the one Sluice chose. Its
certificate comes from a CA made for the test session; Sluice is told to
trust it through the standard ``SSL_CERT_FILE`` variable, no config key.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import random
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from proxy.config import ProviderConfig, TLSConfig
from proxy.http import UpstreamClient, upstream_client
from proxy.http2 import Http2UpstreamClient
from proxy.http1 import Http1Client
from tests.conftest import openai_config
from tests.fakes.openai import FakeOpenAI, stream_chunks
from tests.fakes.server import Reply


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate it signed for localhost, 127.0.0.1 and ::1, and a client certificate, as PEM files."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


def make_certificates(directory: Path) -> dict[str, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1), not_valid_after=now + datetime.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sluice test CA")])
    ca = (
        x509.CertificateBuilder(issuer_name=ca_name, subject_name=ca_name, public_key=ca_key.public_key(),
                                serial_number=x509.random_serial_number(), **valid)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder(issuer_name=ca_name, subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                                    public_key=key.public_key(), serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        return pem, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    server_cert, server_key = leaf("localhost", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, names)
    client_cert, client_key = leaf("sluice", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, [])
    files = {
        "ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem",
        "client_cert": directory / "client.pem", "client_key": directory / "client-key.pem",
    }  # fmt: skip
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, data in (("cert", server_cert), ("key", server_key), ("client_cert", client_cert), ("client_key", client_key)):
        files[name].write_bytes(data)
    return files


class HypercornFakeOpenAI(FakeOpenAI):
    """``FakeOpenAI`` served by hypercorn (TLS when given a certificate), recording how each request came.

    ``seen`` holds ``(http_version, client address)`` per request: the
    address's port tells the TCP connections apart. ``delay`` holds every
    unscripted answer back, so concurrent requests overlap.
    """

    def __init__(self, certificates: dict[str, Path] | None = None, client_ca: Path | None = None) -> None:
        super().__init__()
        self.certificates = certificates
        self.client_ca = client_ca  # when set, a client certificate this CA signed is required
        self.seen: list[tuple[str, tuple[str, int]]] = []
        self.delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.certificates else 'http'}://127.0.0.1:{self.port}"

    @property
    def versions(self) -> list[str]:
        return [version for version, _ in self.seen]

    @property
    def connections(self) -> int:
        return len({client for _, client in self.seen})

    def reset(self) -> None:
        super().reset()
        self.seen.clear()
        self.delay = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["http_version"], tuple(scope["client"])))
            if self.delay:
                await asyncio.sleep(self.delay)
        await super().__call__(scope, receive, send)

    def start(self) -> HypercornFakeOpenAI:
        config = HypercornConfig()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.loglevel = "WARNING"
        # hypercorn ends an HTTP/2 connection after keep_alive_max_requests
        # (1000) streams, and not gracefully: its GOAWAY moves h2's state
        # machine to CLOSED, which can neither send the rest of the streams in
        # flight nor accept the client's next frame (hypercorn then drops the
        # TCP connection), so every request in flight on it fails. The
        # cancellation test sends ~850-1550 requests over one connection and
        # would hit that limit, failing for a reason that is not cancellation.
        config.keep_alive_max_requests = 10**9
        if self.certificates:
            config.certfile, config.keyfile = str(self.certificates["cert"]), str(self.certificates["key"])
        if self.client_ca:
            config.ca_certs, config.verify_mode = str(self.client_ca), ssl.CERT_REQUIRED
        ready = threading.Event()

        async def run() -> None:
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            try:
                await serve(self, config, shutdown_trigger=self._stopping.wait)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - a hypercorn quirk once the tests are over, not Sluice's:
                pass  # its shutdown can race a stream it is still closing ("TaskGroup is shutting down")

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        self._thread.start()
        ready.wait(10)
        _wait_listening(self.port)
        return self

    def stop(self) -> None:
        if self._loop and self._stopping:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread:
            self._thread.join(timeout=5)


def _wait_listening(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("hypercorn fake did not start")


@pytest.fixture(scope="module")
def _tls_server(certificates: dict[str, Path]) -> Iterator[HypercornFakeOpenAI]:
    server = HypercornFakeOpenAI(certificates).start()
    yield server
    server.stop()


@pytest.fixture
def tls_upstream(_tls_server: HypercornFakeOpenAI) -> HypercornFakeOpenAI:
    _tls_server.reset()
    return _tls_server


@pytest.fixture
def trust(certificates: dict[str, Path]) -> dict[str, str]:
    """The environment that makes the proxy trust the test CA."""
    return {"SSL_CERT_FILE": str(certificates["ca"])}


def _config(upstream: HypercornFakeOpenAI, **provider: Any) -> dict[str, Any]:
    return openai_config(upstream, provider=provider, cache={"enabled": False}, dedup={"enabled": False})


def test_chat_completion_over_http2(start_proxy, tls_upstream, trust) -> None:
    proxy = start_proxy(_config(tls_upstream), env=trust)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello h2"}])
    assert completion.choices[0].message.content == "echo: hello h2"
    assert completion.usage is not None and completion.usage.total_tokens == 18
    assert tls_upstream.versions == ["2"]
    assert tls_upstream.calls("/chat/completions")[0].headers["authorization"] == "Bearer sk-upstream-secret-123"


async def test_stream_over_http2(start_proxy, tls_upstream, trust) -> None:
    proxy = start_proxy(_config(tls_upstream), env=trust)
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "echo: one two three"
    assert usage is not None and usage.prompt_tokens == 11
    assert tls_upstream.versions == ["2"]


async def test_concurrent_requests_share_few_connections(start_proxy, tls_upstream, trust) -> None:
    tls_upstream.delay = 0.3
    proxy = start_proxy(_config(tls_upstream), env=trust)
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)

    async def ask(number: int) -> str | None:
        messages = [{"role": "user", "content": f"question {number}"}]
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        return completion.choices[0].message.content

    answers = await asyncio.gather(*(ask(number) for number in range(48)))
    assert answers == [f"echo: question {number}" for number in range(48)]
    assert tls_upstream.versions == ["2"] * 48
    assert tls_upstream.connections <= 2, f"48 concurrent requests opened {tls_upstream.connections} connections"


def test_http2_false_speaks_http11_over_tls(start_proxy, tls_upstream, trust) -> None:
    proxy = start_proxy(_config(tls_upstream, http2=False), env=trust)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json={**body, "stream": False})
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert tls_upstream.versions == ["1.1", "1.1"]


def test_plain_http_upstream_stays_http11(start_proxy) -> None:
    # hypercorn would serve cleartext HTTP/2 to a client that tried it; Sluice must not.
    upstream = HypercornFakeOpenAI().start()
    try:
        proxy = start_proxy(_config(upstream, http2=True))
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
        assert upstream.versions == ["1.1"]
    finally:
        upstream.stop()


async def test_factory_picks_the_transport_by_scheme_and_setting() -> None:
    def client(base_url: str, http2: bool) -> UpstreamClient | Http2UpstreamClient:
        return upstream_client(ProviderConfig(name="p", type="openai", base_url=base_url, http2=http2))

    chosen = [
        client("https://api.example.com/v1", True),
        client("https://api.example.com/v1", False),
        client("http://127.0.0.1:11434", True),
    ]
    try:
        assert [type(c) for c in chosen] == [Http2UpstreamClient, Http1Client, Http1Client]
    finally:
        for c in chosen:
            await c.aclose()


def test_client_disconnect_mid_stream_cancels_only_that_stream(start_proxy, tls_upstream, trust) -> None:
    tls_upstream.script(Reply(chunks=stream_chunks("gpt-4o-mini", " ".join(["word"] * 200)), chunk_delay=0.05))
    proxy = start_proxy(_config(tls_upstream), env=trust)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    assert tls_upstream.disconnected.wait(5), "the upstream kept streaming after the client left (no RST_STREAM)"
    after = httpx.post(f"{proxy.url}/v1/chat/completions", json={**body, "stream": False})
    assert after.json()["choices"][0]["message"]["content"] == "echo: x"
    assert tls_upstream.connections == 1, "the reset closed the shared connection instead of one stream"


def test_client_disconnect_while_waiting_cancels_the_upstream_call(start_proxy, tls_upstream, trust) -> None:
    tls_upstream.script(Reply(hang=True))
    proxy = start_proxy(_config(tls_upstream), env=trust)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    # The client gives up once the upstream holds its request: well past Sluice's first-request
    # work (loading a token encoding), which on a loaded machine can outlast a short timeout.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=2))
    assert tls_upstream.disconnected.wait(5), "the upstream call kept running after the client left (no RST_STREAM)"


def test_untrusted_certificate_is_an_upstream_error(start_proxy, tls_upstream) -> None:
    proxy = start_proxy(_config(tls_upstream))
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert "TLS certificate not trusted" in response.json()["error"]["message"]
    assert tls_upstream.seen == []


async def test_cancelled_requests_leave_the_shared_connection_intact(tls_upstream, certificates, monkeypatch) -> None:
    """Clients hang up at any moment; the requests sharing their connection must not notice."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    url = f"{tls_upstream.url}/v1/chat/completions"
    client = Http2UpstreamClient(ProviderConfig(name="openai", type="openai", base_url=f"{tls_upstream.url}/v1"))
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a b c d e f g h"}], "stream": true}'
    failures: list[BaseException] = []
    finished = 0

    async def ask() -> None:
        nonlocal finished
        while True:
            try:
                response = await client.request("POST", url, {"content-type": "application/json"}, body)
                try:
                    events = [data async for batch in response.sse_batches() for data in batch]
                finally:
                    response.close()
                assert events[-1] == b"[DONE]"
                finished += 1
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)

    rng = random.Random(7)
    tasks = [asyncio.create_task(ask()) for _ in range(16)]
    try:
        for _ in range(150):
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            victim = rng.randrange(len(tasks))
            tasks[victim].cancel()
            tasks[victim] = asyncio.create_task(ask())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
    assert not failures, f"{len(failures)} requests failed beside cancelled ones, first: {failures[0]!r}"
    assert finished > 0 and set(tls_upstream.versions) == {"2"}
    assert tls_upstream.connections <= 2  # a second one only if a hang-up aborted the first one's handshake


async def test_the_httpx_internals_used_are_there(certificates) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """proxy/http2.py sets ``AsyncHTTPTransport._pool`` and walks httpcore's HTTP/2 connections
    (pyproject pins the range); should either change shape, this says so before production does."""
    assert hasattr(httpx.AsyncHTTPTransport(), "_pool")
    upstream = HypercornFakeOpenAI(certificates).start()
    config = ProviderConfig(
        name="p", type="openai", base_url=f"{upstream.url}/v1", tls=TLSConfig(ca_file=str(certificates["ca"]))
    )
    client = Http2UpstreamClient(config)
    try:
        response = await client.request("GET", f"{upstream.url}/v1/models", {})
        await response.read()
        assert hasattr(client._pool, "_requests")  # Http2UpstreamClient.waiting counts the queued ones
        [pooled] = client._pool.connections
        connection = pooled._connection
        assert hasattr(connection, "_h2_state") and hasattr(connection, "_events")
        assert callable(connection._write_outgoing_data)
    finally:
        await client.aclose()
        upstream.stop()
