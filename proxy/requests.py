"""Reading client requests, whichever API they speak: headers, body limits, JSON.

Each API's own fields are validated by its surface (``proxy/surfaces/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Scope

from proxy.config import COMPRESSION_MODES
from proxy.errors import InvalidRequest, RequestTooLarge, SluiceError

@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What the client asked of Sluice itself, through headers (CONTRACT §5)."""

    no_cache: bool
    no_store: bool
    ttl: float | None
    compression: str
    semantic: bool | None = None  # X-Sluice-Semantic: on/off; None when absent


@dataclass(frozen=True, slots=True)
class ClientHeaders:
    """The request headers Sluice reads, picked in one pass over the raw list."""

    authorization: str | None = None
    api_key: str | None = None  # ``x-api-key``, as Anthropic clients send their key
    cache_control: str = ""
    cache_ttl: str | None = None
    compression: str | None = None
    content_length: str | None = None
    passed: dict[str, str] | None = None  # headers an upstream of the API's own type takes as sent
    semantic: str | None = None  # X-Sluice-Semantic: on|off

    @property
    def credential(self) -> str | None:
        """The caller's key, from ``Authorization`` or ``x-api-key``, as an ``Authorization`` value."""
        if self.authorization:
            return self.authorization
        return f"Bearer {self.api_key}" if self.api_key else None


_WANTED = {
    b"authorization": "authorization",
    b"x-api-key": "api_key",
    b"cache-control": "cache_control",
    b"x-sluice-cache-ttl": "cache_ttl",
    b"x-sluice-compression": "compression",
    b"content-length": "content_length",
    b"x-sluice-semantic": "semantic",
}
PASSED_HEADERS = frozenset(
    {b"anthropic-beta", b"openai-beta", b"openai-organization", b"openai-project"}
)
"""Client headers forwarded to a native upstream (a provider drops those not of its own API)."""


def read_headers(scope: Scope) -> ClientHeaders:
    found: dict[str, Any] = {}
    for name, value in scope["headers"]:
        field = _WANTED.get(name)
        if field is not None:
            found[field] = value.decode("latin-1")
        elif name in PASSED_HEADERS:
            found.setdefault("passed", {})[name.decode("latin-1")] = value.decode("latin-1")
    return ClientHeaders(**found) if found else ClientHeaders()


async def read_json_body(request: Request, headers: ClientHeaders, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """The body, read straight off ``receive`` (no per-request async generator) and parsed."""
    length = headers.content_length
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise RequestTooLarge(f"Request body is {length} bytes; the limit is {max_bytes}.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise SluiceError("client disconnected while sending the body", status=499, code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(f"Request body exceeds the limit of {max_bytes} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not raw:
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return raw, body


def request_options(headers: ClientHeaders, default_compression: str) -> RequestOptions:
    cache_control = headers.cache_control.lower()
    ttl: float | None = None
    raw_ttl = headers.cache_ttl
    if raw_ttl is not None:
        try:
            ttl = float(raw_ttl)
        except ValueError:
            raise InvalidRequest("X-Sluice-Cache-TTL must be a number of seconds.", param="X-Sluice-Cache-TTL") from None
        if ttl < 0:
            raise InvalidRequest("X-Sluice-Cache-TTL must not be negative.", param="X-Sluice-Cache-TTL")
    compression = (headers.compression or default_compression).strip().lower()
    if compression not in COMPRESSION_MODES:
        raise InvalidRequest(
            f"X-Sluice-Compression must be one of {', '.join(COMPRESSION_MODES)}.", param="X-Sluice-Compression"
        )
    semantic = None
    if headers.semantic is not None:
        switch = headers.semantic.strip().lower()
        if switch not in ("on", "off"):
            raise InvalidRequest("X-Sluice-Semantic must be on or off.", param="X-Sluice-Semantic")
        semantic = switch == "on"
    return RequestOptions(
        no_cache="no-cache" in cache_control,
        no_store="no-store" in cache_control,
        ttl=ttl,
        compression=compression,
        semantic=semantic,
    )
