"""OpenAI's chat completion shapes, the lingua franca inside Sluice.

A non-streamed answer is a ``Completion``; a streamed one is a sequence of
``Chunk``s. Both keep the exact bytes to send next to the parsed data, so a
passthrough answer is never re-serialized. ``StreamAssembler`` turns chunks
into the completion the cache stores; ``replay_chunks`` turns a stored
completion back into chunks for a streaming client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import SHAPE_ERRORS, UpstreamConnectionError


@dataclass(slots=True)
class Completion:
    """A whole answer (chat completion or embeddings list) as bytes and data."""

    body: bytes
    data: dict[str, Any]

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Completion:
        return cls(orjson.dumps(data), data)

    @property
    def usage(self) -> dict[str, Any] | None:
        """The answer's usage when Sluice can count it (token counts are integers, details an
        object); otherwise None, as if the upstream had reported none, and tokens are estimated."""
        usage = self.data.get("usage")
        if not isinstance(usage, dict):
            return None
        for name in ("prompt_tokens", "completion_tokens"):
            count = usage.get(name)
            if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                return None
        details = usage.get("prompt_tokens_details")
        return usage if details is None or isinstance(details, dict) else None

    def text(self) -> str:
        """Every choice's message text, to estimate tokens when the upstream reported no usage.

        A passed-through answer may have any shape: what is not text counts as nothing.
        """
        choices = self.data.get("choices")
        texts = []
        for choice in choices if isinstance(choices, list) else ():
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
        return "".join(texts)


@dataclass(slots=True)
class Chunk:
    """One stream event: its JSON bytes and parsed data.

    A hub chunk is a ``chat.completion.chunk``; a native stream's event (a
    Responses or Messages event) also keeps its whole SSE ``frame``, event
    line included, to be passed on as it came.
    """

    body: bytes
    data: dict[str, Any]
    frame: bytes | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Chunk:
        return cls(orjson.dumps(data), data)

    @property
    def is_usage_only(self) -> bool:
        """The final usage chunk: no choices, only usage."""
        return not self.data.get("choices") and bool(self.data.get("usage"))

    @property
    def sse(self) -> bytes:
        return self.frame if self.frame is not None else b"data: " + self.body + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class StreamAssembler:
    """Folds stream chunks into the ``chat.completion`` they add up to."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold in one chunk; a chunk of an unexpected shape fails the upstream attempt (502), not Sluice."""
        try:
            self._add(chunk)
        except SHAPE_ERRORS as exc:
            raise UpstreamConnectionError(f"upstream sent a stream chunk of an unexpected shape ({type(exc).__name__})") from None

    def _add(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {
                "id": chunk.get("id"),
                "created": chunk.get("created"),
                "model": chunk.get("model"),
            }
            if chunk.get("system_fingerprint") is not None:
                self._head["system_fingerprint"] = chunk["system_fingerprint"]
            if chunk.get("service_tier") is not None:
                self._head["service_tier"] = chunk["service_tier"]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        # Text arrives in many small pieces: collect them and join once (``completion``).
        index = choice.get("index", 0)
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = {
                "role": "assistant",
                "content": [],
                "refusal": [],
                "reasoning_content": [],
                "tool_calls": {},
                "finish_reason": None,
                "logprobs": None,
            }
        delta = choice.get("delta") or {}
        if delta.get("role"):
            state["role"] = delta["role"]
        for field in ("content", "refusal", "reasoning_content"):
            if delta.get(field) is not None:
                state[field].append(delta[field])
        for call in delta.get("tool_calls") or ():
            slot = state["tool_calls"].setdefault(
                call.get("index", 0), {"id": None, "type": "function", "name": [], "arguments": []}
            )
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            function = call.get("function") or {}
            if function.get("name"):
                slot["name"].append(function["name"])
            if function.get("arguments"):
                slot["arguments"].append(function["arguments"])
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if logprobs and logprobs.get("content"):
            state["logprobs"] = state["logprobs"] or {"content": [], "refusal": None}
            state["logprobs"]["content"].extend(logprobs["content"])

    @property
    def finished(self) -> bool:
        """Every choice seen has a finish reason: the stream was not cut short."""
        return bool(self._choices) and all(c["finish_reason"] for c in self._choices.values())

    def completion(self) -> Completion:
        try:
            return self._completion()
        except SHAPE_ERRORS as exc:
            raise UpstreamConnectionError(f"upstream sent stream chunks that add up to no answer ({type(exc).__name__})") from None

    def _completion(self) -> Completion:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state["role"],
                "content": "".join(state["content"]) if state["content"] else None,
                "refusal": "".join(state["refusal"]) if state["refusal"] else None,
            }
            if state["reasoning_content"]:  # a thinking model's thoughts survive the cache
                message["reasoning_content"] = "".join(state["reasoning_content"])
            if state["tool_calls"]:
                message["tool_calls"] = [_tool_call(state["tool_calls"][i]) for i in sorted(state["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "logprobs": state["logprobs"], "finish_reason": state["finish_reason"]}
            )
        data: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": choices,
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self._head:
                data[key] = self._head[key]
        if self._usage is not None:
            data["usage"] = self._usage
        return Completion.from_data(data)


def _tool_call(slot: dict[str, Any]) -> dict[str, Any]:
    function = {"name": "".join(slot["name"]), "arguments": "".join(slot["arguments"])}
    return {"id": slot["id"], "type": slot["type"], "function": function}


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[Chunk]:
    """A stored ``chat.completion`` as the chunks a live stream would have sent."""
    head: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    chunks: list[Chunk] = []

    def emit(choices: list[dict[str, Any]], **extra: Any) -> None:
        chunks.append(Chunk.from_data({**head, "choices": choices, **extra}))

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        emit([{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""}, "finish_reason": None}])
        if message.get("reasoning_content"):
            emit([{"index": index, "delta": {"reasoning_content": message["reasoning_content"]}, "finish_reason": None}])
        if message.get("content"):
            emit([{"index": index, "delta": {"content": message["content"]}, "logprobs": choice.get("logprobs"), "finish_reason": None}])
        if message.get("refusal"):
            emit([{"index": index, "delta": {"refusal": message["refusal"]}, "finish_reason": None}])
        for position, call in enumerate(message.get("tool_calls") or ()):
            delta_call = {"index": position, "id": call.get("id"), "type": call.get("type", "function"), "function": call.get("function")}
            emit([{"index": index, "delta": {"tool_calls": [delta_call]}, "finish_reason": None}])
        emit([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    if include_usage and completion.get("usage"):
        emit([], usage=completion["usage"])
    return chunks
