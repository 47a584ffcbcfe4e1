"""Reading and validating client requests: body limits, JSON, field types, headers.

Validation is deliberately shallow: it rejects what would make Sluice itself
fail (wrong types on the fields it reads) with a 400 naming the field, and
leaves the rest for the upstream to judge, so new OpenAI parameters pass
through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Scope

from proxy.config import COMPRESSION_MODES
from proxy.errors import InvalidRequest, RequestTooLarge, SluiceError

CHAT = "chat"
EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    model: str
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What the client asked of Sluice itself, through headers (CONTRACT §5)."""

    no_cache: bool
    no_store: bool
    ttl: float | None
    compression: str


@dataclass(frozen=True, slots=True)
class ClientHeaders:
    """The request headers Sluice reads, picked in one pass over the raw list."""

    authorization: str | None = None
    cache_control: str = ""
    cache_ttl: str | None = None
    compression: str | None = None
    content_length: str | None = None
    openai_organization: str | None = None
    openai_project: str | None = None
    openai_beta: str | None = None

    @property
    def forwarded(self) -> dict[str, str]:
        """The client headers an upstream takes as sent, keyed in lower case: ``Call.headers``."""
        found: dict[str, str] = {}
        if self.openai_organization is not None:
            found["openai-organization"] = self.openai_organization
        if self.openai_project is not None:
            found["openai-project"] = self.openai_project
        if self.openai_beta is not None:
            found["openai-beta"] = self.openai_beta
        return found


_WANTED = {
    b"authorization": "authorization",
    b"cache-control": "cache_control",
    b"x-sluice-cache-ttl": "cache_ttl",
    b"x-sluice-compression": "compression",
    b"content-length": "content_length",
    b"openai-organization": "openai_organization",
    b"openai-project": "openai_project",
    b"openai-beta": "openai_beta",
}


def read_headers(scope: Scope) -> ClientHeaders:
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        field = _WANTED.get(name)
        if field is not None:
            found[field] = value.decode("latin-1")
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


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTEGERS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs")


def parse_chat(body: dict[str, Any]) -> ParsedRequest:
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"'messages[{index}]' must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"'messages[{index}].role' must be a string.", param=f"messages[{index}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"'messages[{index}].content' must be a string or an array of parts.", param=f"messages[{index}].content"
            )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidRequest(f"'{name}' must be a number.", param=name)
    for name in _INTEGERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    include_usage = bool(stream and options and options.get("include_usage"))
    return ParsedRequest(model, bool(stream), include_usage)


def parse_embeddings(body: dict[str, Any]) -> ParsedRequest:
    model = _require_model(body)
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
    return ParsedRequest(model, False, False)


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
    return RequestOptions(
        no_cache="no-cache" in cache_control,
        no_store="no-store" in cache_control,
        ttl=ttl,
        compression=compression,
    )
