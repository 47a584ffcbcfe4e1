"""Chat Completions (``POST /v1/chat/completions``): the hub's own API.

Answers and stream chunks are already in this API's shape, so rendering is
passing their bytes on; the only choice left to the client is whether the
final usage-only chunk is sent (``stream_options.include_usage``).
"""

from __future__ import annotations

from typing import Any

from proxy.completions import SSE_DONE, Chunk
from proxy.errors import InvalidRequest, SluiceError, error_event
from proxy.surfaces.base import (
    HubSurface,
    ParsedRequest,
    SemanticParts,
    StreamRenderer,
    last_turn_parts,
    require_model,
    required,
    streaming,
)

_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTEGERS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs")


class ChatSurface(HubSurface):
    api = "chat"
    path = "/v1/chat/completions"

    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        return parse_chat(body)

    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        return ChatRenderer(include_usage)

    def semantic_parts(self, body: dict[str, Any]) -> SemanticParts | None:
        return last_turn_parts(body, "messages", "text")


class ChatRenderer:
    """Chunks as they are; the usage-only chunk only for clients that asked for it."""

    __slots__ = ("include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def feed(self, chunks: list[Chunk]) -> bytes:
        if self.include_usage:
            return b"".join([c.sse for c in chunks])
        return b"".join([c.sse for c in chunks if not c.is_usage_only])

    def close(self) -> bytes:
        return SSE_DONE

    def fail(self, error: SluiceError) -> bytes:
        return error_event(error)


def parse_chat(body: dict[str, Any]) -> ParsedRequest:
    """Shallow on purpose: reject what would make Sluice itself fail, naming the field, and
    leave the rest for the upstream to judge, so new OpenAI parameters pass through untouched."""
    model = require_model(body)
    messages = required(body, "messages")
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
    stream, include_usage = streaming(body)
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
    return ParsedRequest(model, stream, include_usage)
