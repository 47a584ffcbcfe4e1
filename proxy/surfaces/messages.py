"""Anthropic's Messages API (``POST /v1/messages``) over the hub, for every provider type.

An anthropic-type provider speaks this API natively; every other provider gets
the request translated to Chat Completions (``messages_request``), and its
answer (``messages_answer``), stream (``messages_stream``) and errors
(``messages_errors``) translated back, so the ``anthropic`` SDK cannot tell.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from proxy import anthropic_usage
from proxy.errors import InvalidRequest, SluiceError
from proxy.surfaces import messages_answer, messages_errors, messages_request, messages_stream
from proxy.surfaces.base import (
    NativeAssembler,
    ParsedRequest,
    SemanticParts,
    StreamRenderer,
    Surface,
    last_turn_parts,
    require_model,
)
from proxy.tokens import count_messages, count_text

ROLES = ("user", "assistant")


class MessagesSurface(Surface):
    api = "messages"
    path = "/v1/messages"

    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        model = _validate(body)
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise InvalidRequest("max_tokens: Field required.", param="max_tokens")
        if not _is_int(max_tokens) or max_tokens < 1:
            raise InvalidRequest("max_tokens: must be an integer of at least 1.", param="max_tokens")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest("stream: must be a boolean.", param="stream")
        return ParsedRequest(model, bool(stream))

    def keyed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Without ``metadata.user_id``, the Messages API's ``user``: Claude Code sends a new one
        each session, and identical requests of two sessions must share the cache and a flight."""
        metadata = body.get("metadata")
        if not isinstance(metadata, dict) or "user_id" not in metadata:
            return body
        rest = {name: value for name, value in metadata.items() if name != "user_id"}
        keyed = {name: value for name, value in body.items() if name != "metadata"}
        if rest:
            keyed["metadata"] = rest
        return keyed

    def to_hub(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return messages_request.to_hub(body, history)

    def semantic_parts(self, body: dict[str, Any]) -> SemanticParts | None:
        return last_turn_parts(body, "messages", "text")  # the system prompt stays in the rest

    def from_hub(self, completion: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        estimate = 0 if completion.get("usage") else self.count_tokens(request)
        return messages_answer.from_hub(completion, request, estimate)

    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        """Usage is part of every Messages stream, so ``include_usage`` does not matter."""
        return messages_stream.MessagesRenderer(request, lambda: self.count_tokens(request))

    def assembler(self) -> NativeAssembler:
        return messages_stream.MessagesAssembler()

    def replay(self, answer: dict[str, Any], request: dict[str, Any]) -> bytes:
        return messages_stream.replay(answer)

    def hub_usage(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        return anthropic_usage.to_hub(answer.get("usage"))

    def error_response(self, error: SluiceError, headers: dict[str, str] | None = None) -> Response:
        return messages_errors.error_response(error, headers)

    def error_event(self, error: SluiceError) -> bytes:
        return messages_errors.error_event(error)

    def count_tokens(self, body: dict[str, Any]) -> int:
        """tiktoken's estimate of the prompt (``POST /v1/messages/count_tokens`` for non-anthropic
        providers, and ``message_start``'s input tokens), counted as the hub messages and tools sent.

        Validates ``body`` as a count_tokens request (no ``max_tokens`` needed).
        """
        model = _validate(body)
        hub = messages_request.to_hub(body)
        tokens = count_messages(hub["messages"], model)
        if hub.get("tools"):
            tokens += count_text(orjson.dumps(hub["tools"]).decode(), model)
        return tokens


# -- validation: what Sluice reads, Anthropic-style; the rest is the upstream's to judge --


def _validate(body: dict[str, Any]) -> str:
    """The fields a Messages and a count_tokens request share; returns the model."""
    model = require_model(body)
    _validate_messages(body.get("messages"))
    _validate_system(body.get("system"))
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidRequest(f"{name}: must be a number.", param=name)
    if body.get("top_k") is not None and not _is_int(body["top_k"]):
        raise InvalidRequest("top_k: must be an integer.", param="top_k")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise InvalidRequest("stop_sequences: must be an array of strings.", param="stop_sequences")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise InvalidRequest("tools: must be an array of tool objects.", param="tools")
    for name in ("tool_choice", "thinking"):
        value = body.get(name)
        if value is not None and (not isinstance(value, dict) or not isinstance(value.get("type"), str)):
            raise InvalidRequest(f"{name}: must be an object with a string 'type'.", param=name)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata: must be an object.", param="metadata")
    return model


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise InvalidRequest("messages: Field required.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{param}: must be an object.", param=param)
        if message.get("role") not in ROLES:
            raise InvalidRequest(f"{param}.role: must be 'user' or 'assistant'.", param=f"{param}.role")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"{param}.content: must be a string or an array of blocks.", param=f"{param}.content")
        for position, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                at = f"{param}.content[{position}]"
                raise InvalidRequest(f"{at}: must be a block object with a string 'type'.", param=at)


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list) or not all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) for b in system
    ):
        raise InvalidRequest("system: must be a string or an array of text blocks.", param="system")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
