"""proxy/egress.py: which proxy applies (curl's rules), and connecting with Happy Eyeballs and a DNS cache.

The end-to-end behaviour (a real tinyproxy, TLS upstreams) is in
tests/test_network.py; these pin the rules themselves.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from proxy.config import ProviderConfig
from proxy.egress import Dialer, ForwardProxy, bypassed, forward_proxy


@pytest.mark.parametrize(
    ("host", "no_proxy", "expected"),
    [
        ("api.openai.com", "*", True),
        ("api.openai.com", "openai.com", True),
        ("api.openai.com", ".openai.com", True),
        ("notopenai.com", "openai.com", False),
        ("api.openai.com", "example.com, openai.com", True),
        ("api.openai.com", "example.com openai.com", True),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("::1", "[::1]", True),
        ("::1", "::/0", True),
        ("127.0.0.1", "localhost", False),
        ("LOCALHOST", "localhost.", True),
        ("api.openai.com", "", False),
    ],
)
def test_no_proxy_follows_curl(host: str, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, no_proxy) is expected


def _provider(base_url: str, proxy: str = "") -> ProviderConfig:
    return ProviderConfig(name="p", type="openai", base_url=base_url, proxy=proxy)


def test_proxy_by_scheme_lower_case_first_and_all_proxy_last() -> None:
    environ = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "HTTP_PROXY": "plain:3"}
    assert forward_proxy(_provider("https://api.example/v1"), environ) == ForwardProxy("lower", 2)
    assert forward_proxy(_provider("http://api.example/v1"), environ) == ForwardProxy("plain", 3)
    assert forward_proxy(_provider("http://api.example/v1"), {"ALL_PROXY": "http://all:4"}) == ForwardProxy("all", 4)
    assert forward_proxy(_provider("https://api.example/v1"), {}) is None
    assert forward_proxy(_provider("https://api.example/v1"), {**environ, "NO_PROXY": "example"}) is None


def test_a_providers_proxy_wins_and_carries_its_credentials() -> None:
    provider = _provider("https://api.example/v1", proxy="http://user:p%40ss@gate:3128")
    found = forward_proxy(provider, {"NO_PROXY": "*"})
    assert found == ForwardProxy("gate", 3128, "Basic dXNlcjpwQHNz")  # user:p@ss
    with pytest.raises(ValueError, match="http://"):
        ForwardProxy.parse("socks5://gate:1080")


@pytest.fixture
def blackholed() -> Iterator[tuple[str, int, int, tuple]]:
    """An address whose SYNs go unanswered: a listener with a full accept queue."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(listener.getsockname())
    yield (socket.AF_INET, socket.SOCK_STREAM, 6, listener.getsockname())
    filler.close()
    listener.close()


async def test_happy_eyeballs_moves_on_from_an_address_that_does_not_answer(blackholed) -> None:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    good = server.sockets[0].getsockname()
    dialer = Dialer("dual-stack.example", good[1])
    dialer._addresses = [blackholed, (socket.AF_INET, socket.SOCK_STREAM, 6, good)]
    dialer._expires = float("inf")  # as if just resolved: the cache is what connect uses
    try:
        async with asyncio.timeout(5):  # the blackholed SYN alone would take over a second to even retry
            sock = await dialer.connect()
        assert sock.getpeername() == good
        sock.close()
    finally:
        server.close()


async def test_dns_answers_are_reused_until_they_expire() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    dialer = Dialer("localhost", server.sockets[0].getsockname()[1])
    try:
        (await dialer.connect()).close()
        first = dialer._addresses
        dialer._addresses = [a for a in first if a[0] == socket.AF_INET]  # a later lookup would bring ::1 back
        (await dialer.connect()).close()
        assert dialer._addresses is not first
        dialer._expires = 0.0
        (await dialer.connect()).close()
        assert sorted(dialer._addresses) == sorted(first)
    finally:
        server.close()


def test_config_refuses_a_bad_proxy_or_unreadable_tls_files_and_masks_the_proxy_password(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from proxy.config import ConfigError, parse_config

    def config(**provider: object) -> str:
        import yaml

        entry = {"name": "p", "type": "openai", "base_url": "https://api.example/v1", **provider}
        return yaml.safe_dump({"providers": [entry]})

    with pytest.raises(ConfigError, match=r"providers\[0\]: proxy: forward proxy must be an http:// URL"):
        parse_config(config(proxy="socks5://gate:1080"))
    monkeypatch.setenv("ALL_PROXY", "socks5://gate:1080")
    with pytest.raises(ConfigError, match=r"providers\[0\]: ALL_PROXY: forward proxy must be an http:// URL"):
        parse_config(config())
    monkeypatch.setenv("NO_PROXY", "api.example")
    parse_config(config())  # a proxy that does not apply is no problem
    with pytest.raises(ConfigError, match=r"providers\[0\]\.tls: cannot load"):
        parse_config(config(tls={"ca_file": str(tmp_path / "missing.pem")}))
    masked = parse_config(config(proxy="http://user:hunter2@gate:3128")).masked()
    assert masked["providers"][0]["proxy"] == "http://user:***@gate:3128"
