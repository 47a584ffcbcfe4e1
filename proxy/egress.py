"""How an upstream client reaches its origin: forward proxy, TLS settings, and the TCP connect.

Both upstream clients (``proxy/http1.py``, ``proxy/http2.py``) take these
decisions from here, once per provider when the client is built, so the two
transports reach an upstream the same way and no request pays for them:

* ``forward_proxy``: the provider's ``proxy``, else ``HTTPS_PROXY`` /
  ``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` from the environment, read
  as curl reads them (lower case first, then upper case);
* ``tls_context``: the system's trust (and ``SSL_CERT_FILE``), plus
  ``tls.ca_file``, ``tls.verify`` and a client certificate;
* ``Dialer``: DNS answers cached for ``DNS_TTL`` seconds and the addresses
  raced Happy Eyeballs style (RFC 8305), so a blackholed IPv6 route costs
  ``HAPPY_EYEBALLS_DELAY``, not the whole connect timeout.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # the config validates with this module, so this module may not import it at run time
    from proxy.config import ProviderConfig, TLSConfig

DNS_TTL = 30.0
"""Seconds a host's resolved addresses are reused for new connections."""

HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds one address gets before the next is tried alongside it (RFC 8305 recommends 250 ms)."""


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """An ``http://`` forward proxy: where to connect, and the ``Proxy-Authorization`` it needs."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def parse(cls, url: str) -> ForwardProxy:
        """``http://[user:password@]host[:port]``; a URL without a scheme is taken as http, as curl does."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError(f"forward proxy must be an http:// URL with a host, not {parts.scheme}://")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, parts.port or 80, authorization)


def forward_proxy(config: ProviderConfig, environ: Mapping[str, str] = os.environ) -> ForwardProxy | None:
    """The proxy this provider's upstream is reached through, or None for a direct connection.

    A provider's ``proxy`` wins over the environment (``NO_PROXY`` included).
    ``ValueError`` names the setting or variable that holds an unusable URL.
    """
    if config.proxy:
        return _parsed("proxy", config.proxy)
    parts = urlsplit(config.base_url)
    scheme = parts.scheme.lower()
    name, url = _env(environ, f"{scheme}_proxy")
    if not url:
        name, url = _env(environ, "all_proxy")
    if not url or bypassed(parts.hostname or "", _env(environ, "no_proxy")[1]):
        return None
    return _parsed(name, url)


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """The variable (lower case first, as curl) and its value."""
    for variable in (name, name.upper()):
        value = (environ.get(variable) or "").strip()
        if value:
            return variable, value
    return name, ""


def _parsed(source: str, url: str) -> ForwardProxy:
    try:
        return ForwardProxy.parse(url)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host``, by curl's rules.

    Entries are separated by commas or spaces. ``*`` matches every host; a
    name matches itself and its subdomains (a leading dot changes nothing);
    an IP address matches itself, and a CIDR range the addresses in it.
    """
    host = host.lower().strip("[]").rstrip(".")
    address = _address(host)
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.lower().strip("[]").lstrip(".").rstrip(".")
        if entry == "*":
            return True
        if not entry:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if host == entry or host.endswith("." + entry):
            return True
    return False


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS settings of one provider's connections.

    ``ssl.create_default_context`` loads the system's store, and OpenSSL adds
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set; ``ca_file`` adds to that.
    """
    context = ssl.create_default_context()
    if tls.ca_file:
        context.load_verify_locations(cafile=tls.ca_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    return context


class Dialer:
    """Opens TCP connections to one host and port: DNS cached, addresses raced.

    The answer of one lookup serves every connection opened in the next
    ``DNS_TTL`` seconds. Addresses are tried in the resolver's order with the
    families interleaved; each gets ``HAPPY_EYEBALLS_DELAY`` before the next
    starts alongside it, and the first to connect wins.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._addresses: list[tuple[int, int, int, tuple]] = []  # (family, type, proto, sockaddr)
        self._expires = 0.0

    async def connect(self) -> socket.socket:
        """A connected non-blocking socket; ``OSError`` naming the last failure when none connects."""
        loop = asyncio.get_running_loop()
        addresses = await self._resolve(loop)
        pending: set[asyncio.Task[socket.socket]] = set()
        errors: list[OSError] = []
        winner: socket.socket | None = None
        try:
            for address in addresses:
                pending.add(loop.create_task(_attempt(loop, address)))
                winner = await _first(pending, errors, HAPPY_EYEBALLS_DELAY)
                if winner is not None:
                    return winner
            while pending and winner is None:
                winner = await _first(pending, errors, None)
            if winner is not None:
                return winner
        finally:
            for task in pending:
                task.cancel()
                task.add_done_callback(_close_late_winner)
        raise errors[-1] if errors else OSError(f"no address for {self.host}")

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[tuple[int, int, int, tuple]]:
        now = loop.time()
        if self._addresses and now < self._expires:
            return self._addresses
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        self._addresses = _interleaved([(family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr in infos])
        self._expires = now + DNS_TTL
        return self._addresses


async def _attempt(loop: asyncio.AbstractEventLoop, address: tuple[int, int, int, tuple]) -> socket.socket:
    family, kind, proto, sockaddr = address
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _first(
    pending: set[asyncio.Task[socket.socket]], errors: list[OSError], timeout: float | None
) -> socket.socket | None:
    """Wait up to ``timeout`` for an attempt to finish: its socket if one connected (extra winners closed)."""
    done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    winner = None
    for task in done:
        pending.discard(task)
        error = task.exception()
        if error is not None:
            errors.append(error if isinstance(error, OSError) else OSError(str(error)))
        elif winner is None:
            winner = task.result()
        else:
            task.result().close()
    return winner


def _close_late_winner(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _interleaved(addresses: list[tuple[int, int, int, tuple]]) -> list[tuple[int, int, int, tuple]]:
    """The first family's first address, then the other family's, alternating (RFC 8305 §4)."""
    if not addresses:
        return addresses
    first = [a for a in addresses if a[0] == addresses[0][0]]
    other = [a for a in addresses if a[0] != addresses[0][0]]
    mixed: list[tuple[int, int, int, tuple]] = []
    for index in range(max(len(first), len(other))):
        mixed.extend(group[index] for group in (first, other) if index < len(group))
    return mixed
