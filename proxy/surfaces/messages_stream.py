"""Anthropic's stream events: written from hub chunks, replayed from a stored message, folded back.

The order is Anthropic's (docs "Streaming Messages"): ``message_start`` (the
message with empty content and the input usage), then per content block
``content_block_start``, its ``content_block_delta``s and
``content_block_stop`` (one block open at a time, indexes counting up), then
``message_delta`` (stop reason, stop sequence and the cumulative usage) and
``message_stop``. ``EventWriter`` is the only code that frames these events,
for live streams and replays alike, so both look the same to a client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from proxy import anthropic_usage
from proxy.completions import Chunk
from proxy.errors import SluiceError
from proxy.surfaces.messages_answer import matched_stop, stop_reason, tool_input
from proxy.surfaces.messages_errors import error_event
from proxy.surfaces.messages_ids import message_id, tool_use_id


def frame(data: dict[str, Any]) -> bytes:
    """One SSE event, named by its ``type`` as Anthropic names them."""
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventWriter:
    """Frames one message's events in order, numbering content blocks and closing each before the next."""

    __slots__ = ("_open", "_out", "index")

    def __init__(self) -> None:
        self.index = -1  # the last block opened
        self._open = False
        self._out: list[bytes] = []

    def start(self, message: dict[str, Any]) -> None:
        self._out.append(frame({"type": "message_start", "message": message}))

    def open_block(self, block: dict[str, Any]) -> int:
        self.close_block()
        self.index += 1
        self._open = True
        self._out.append(frame({"type": "content_block_start", "index": self.index, "content_block": block}))
        return self.index

    def delta(self, index: int, delta: dict[str, Any]) -> None:
        self._out.append(frame({"type": "content_block_delta", "index": index, "delta": delta}))

    def close_block(self) -> None:
        if self._open:
            self._open = False
            self._out.append(frame({"type": "content_block_stop", "index": self.index}))

    def finish(self, reason: str, sequence: str | None, usage_data: dict[str, Any]) -> None:
        self.close_block()
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        self._out.append(frame({"type": "message_delta", "delta": delta, "usage": usage_data}))
        self._out.append(frame({"type": "message_stop"}))

    def take(self) -> bytes:
        """The frames written since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out


def message_head(identifier: str, model: Any, usage_data: dict[str, Any]) -> dict[str, Any]:
    """``message_start``'s message: no content or stop reason yet, the input usage known so far, no output yet."""
    return {
        "id": identifier,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage_data, "output_tokens": 0},
    }


# Block kinds the renderer keeps open while their deltas keep coming.
_THINKING, _TEXT, _TOOL = "thinking", "text", "tool_use"


class MessagesRenderer:
    """A hub stream (``chat.completion.chunk``s, first choice) as Anthropic events, for one client.

    ``message_start`` must carry the input tokens (clients such as Claude Code
    size their context from it), but the hub's usage arrives last. When the
    first batch already holds it (a cache replay, a short answer read at once)
    it is used; otherwise ``estimate`` (tiktoken's count of the prompt) stands
    in, and ``message_delta`` brings the upstream's real counts, which the
    SDKs take over those of ``message_start``.
    """

    __slots__ = ("_estimate", "_finish", "_kind", "_matched", "_refused", "_request", "_started", "_tools", "_usage", "_writer")

    def __init__(self, request: dict[str, Any], estimate: Callable[[], int]) -> None:
        self._request = request
        self._estimate = estimate
        self._writer = EventWriter()
        self._started = False
        self._kind: str | None = None  # the open block's kind
        self._tools: dict[int, int] = {}  # hub tool call index → block index
        self._finish: str | None = None
        self._matched: str | None = None
        self._refused = False
        self._usage: dict[str, Any] | None = None

    def feed(self, chunks: list[Chunk]) -> bytes:
        if not self._started and chunks:
            self._usage = next((c.data["usage"] for c in reversed(chunks) if c.data.get("usage")), None)
            self._start(chunks[0].data.get("id"), chunks[0].data.get("model"))
        for chunk in chunks:
            data = chunk.data
            if data.get("usage"):
                self._usage = data["usage"]
            for choice in data.get("choices") or ():
                if choice.get("index", 0) == 0:
                    self._choice(choice)
        return self._writer.take()

    def close(self) -> bytes:
        if not self._started:
            self._start(None, None)
        reason = stop_reason(self._finish, self._matched, self._refused, bool(self._tools))
        self._writer.finish(reason, self._matched, self._usage_now())
        return self._writer.take()

    def fail(self, error: SluiceError) -> bytes:
        return error_event(error)

    def _start(self, chat_id: str | None, model: Any) -> None:
        self._started = True
        self._writer.start(message_head(message_id(chat_id), model or self._request.get("model"), self._usage_now()))

    def _usage_now(self) -> dict[str, int]:
        return anthropic_usage.from_hub(self._usage) if self._usage else anthropic_usage.from_hub(None, self._estimate())

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            self._text(_THINKING, {"type": "thinking_delta", "thinking": delta["reasoning_content"]})
        if delta.get("content"):
            self._text(_TEXT, {"type": "text_delta", "text": delta["content"]})
        if delta.get("refusal"):
            self._refused = True
            self._text(_TEXT, {"type": "text_delta", "text": delta["refusal"]})
        for call in delta.get("tool_calls") or ():
            self._tool(call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._matched = matched_stop(choice, self._request)

    def _text(self, kind: str, delta: dict[str, Any]) -> None:
        if self._kind != kind:
            self._kind = kind
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == _THINKING else {"type": "text", "text": ""}
            self._writer.open_block(block)
        self._writer.delta(self._writer.index, delta)

    def _tool(self, call: dict[str, Any]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        index = self._tools.get(position)
        if index is None:
            self._kind = _TOOL
            block = {"type": "tool_use", "id": tool_use_id(call.get("id") or ""), "name": function.get("name") or "", "input": {}}
            index = self._tools[position] = self._writer.open_block(block)
        if function.get("arguments"):
            self._writer.delta(index, {"type": "input_json_delta", "partial_json": function["arguments"]})


def replay(message: dict[str, Any]) -> bytes:
    """A whole stored ``message`` as the events a live stream of it sends, each block whole in one delta."""
    writer = EventWriter()
    usage_data = message.get("usage") or {}
    writer.start(message_head(message.get("id") or "", message.get("model"), usage_data))
    for block in message.get("content") or ():
        _replay_block(writer, block)
    writer.finish(message.get("stop_reason") or "end_turn", message.get("stop_sequence"), usage_data)
    return writer.take()


def _replay_block(writer: EventWriter, block: dict[str, Any]) -> None:
    kind = block.get("type")
    if kind == "text":
        index = writer.open_block({**block, "text": ""})
        if block.get("text"):
            writer.delta(index, {"type": "text_delta", "text": block["text"]})
    elif kind == "thinking":
        index = writer.open_block({"type": "thinking", "thinking": "", "signature": ""})
        if block.get("thinking"):
            writer.delta(index, {"type": "thinking_delta", "thinking": block["thinking"]})
        if block.get("signature"):
            writer.delta(index, {"type": "signature_delta", "signature": block["signature"]})
    elif kind == "tool_use":
        index = writer.open_block({**block, "input": {}})
        writer.delta(index, {"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input") or {}).decode()})
    else:  # redacted thinking, server tool results...: Anthropic sends them whole in their start event
        writer.open_block(block)
    writer.close_block()


class MessagesAssembler:
    """Folds a native Anthropic stream's events into the ``message`` they add up to."""

    __slots__ = ("_finished", "_message", "_pieces")

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._pieces: dict[int, list[str]] = {}  # block index → text, thinking or partial JSON pieces
        self._finished = False

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self._message = {**event.get("message", {}), "content": []}
        elif self._message is None:
            return
        elif kind == "content_block_start":
            self._message["content"].append(dict(event.get("content_block") or {}))
            self._pieces[len(self._message["content"]) - 1] = []
        elif kind == "content_block_delta":
            self._delta(event.get("index", 0), event.get("delta") or {})
        elif kind == "message_delta":
            for key, value in (event.get("delta") or {}).items():
                if value is not None or key in self._message:  # a null stop_sequence is news; a null container is not
                    self._message[key] = value
            merged = dict(self._message.get("usage") or {})
            merged.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            self._message["usage"] = merged
        elif kind == "message_stop":
            self._finished = True

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        assert self._message is not None
        if not 0 <= index < len(self._message["content"]):
            return
        block = self._message["content"][index]
        kind = delta.get("type")
        if kind in ("text_delta", "thinking_delta", "input_json_delta"):
            field = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}[kind]
            self._pieces[index].append(delta.get(field) or "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))

    @property
    def finished(self) -> bool:
        return self._finished

    def result(self) -> dict[str, Any]:
        message = dict(self._message or {})
        content = []
        for index, block in enumerate(message.get("content") or ()):
            joined = "".join(self._pieces.get(index, ()))
            kind = block.get("type")
            if kind == "text":
                block = {**block, "text": block.get("text", "") + joined}
            elif kind == "thinking":
                block = {**block, "thinking": block.get("thinking", "") + joined}
            elif joined:  # tool_use and server_tool_use: their input arrives as JSON text
                block = {**block, "input": tool_input(joined)}
            content.append(block)
        message["content"] = content
        return message
