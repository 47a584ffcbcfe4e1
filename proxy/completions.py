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

from proxy.errors import SHAPE_ERRORS, UpstreamProtocolError


@dataclass(slots=True)
class Completion:
    """A whole answer (chat completion or embeddings list) as bytes and data.

    ``upstream_headers``: the upstream's answer headers meant for the client
    (its request id, its rate limits); they describe one call, so a cache
    never stores them.
    """

    body: bytes
    data: dict[str, Any]
    upstream_headers: dict[str, str] | None = None

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
    """Folds stream chunks into the ``chat.completion`` they add up to, losing no field.

    Every delta field is kept by one rule, known or not (``reasoning_content``,
    ``reasoning``, ``annotations``, ``audio``, ``function_call``, and whatever
    comes next): strings concatenate, lists extend, objects merge by the same
    rule, other values take the latest; inside an object an ``id`` or
    ``type`` string is a name, not a piece, and takes the latest too.
    ``tool_calls`` merge by their ``index``. Unknown fields of a choice or of
    the chunk itself take their latest value. ``replay_chunks`` sends each
    field back, so a cached answer streams out as it streamed in.
    """

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _ChoiceState] = {}
        self._usage: dict[str, Any] | None = None
        self._keys_seen = 0

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold in one chunk; a chunk of an unexpected shape fails the upstream attempt (502), not Sluice."""
        try:
            self._add(chunk)
        except SHAPE_ERRORS as exc:
            raise UpstreamProtocolError(f"upstream sent a stream chunk of an unexpected shape ({type(exc).__name__})") from None

    def _add(self, chunk: dict[str, Any]) -> None:
        head = self._head
        if not head:
            head["id"], head["created"], head["model"] = chunk.get("id"), chunk.get("created"), chunk.get("model")
        if len(chunk) != self._keys_seen:  # a stream's chunks repeat the same fields: read them when the set changes
            self._keys_seen = len(chunk)
            for key, value in chunk.items():
                if key not in _CHUNK_OWN and value is not None:
                    head[key] = value
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _ChoiceState()
            state.add(choice)

    @property
    def finished(self) -> bool:
        """Every choice seen has a finish reason: the stream was not cut short."""
        return bool(self._choices) and all(c.finish_reason for c in self._choices.values())

    def completion(self) -> Completion:
        try:
            return self._completion()
        except SHAPE_ERRORS as exc:
            raise UpstreamProtocolError(f"upstream sent stream chunks that add up to no answer ({type(exc).__name__})") from None

    def _completion(self) -> Completion:
        data: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": [self._choices[index].choice(index) for index in sorted(self._choices)],
        }
        for key, value in self._head.items():
            data.setdefault(key, value)
        if self._usage is not None:
            data["usage"] = self._usage
        return Completion.from_data(data)


def _thoughts_first(item: tuple[str, Any]) -> bool:
    """A replay sends a thinking model's reasoning before its answer, as the live stream did."""
    return not item[0].startswith("reasoning")


_CHUNK_OWN = frozenset({"id", "object", "created", "model", "choices", "usage", "obfuscation"})
"""Chunk fields the assembler handles itself, or that belong to one chunk only (``obfuscation`` pads it)."""

_CHOICE_OWN = frozenset({"index", "delta", "finish_reason", "logprobs"})


class _ChoiceState:
    """One choice's message as its deltas add up; strings are kept in pieces and joined once."""

    __slots__ = ("role", "fields", "tool_calls", "finish_reason", "logprobs", "extra")

    def __init__(self) -> None:
        self.role = "assistant"
        self.fields: dict[str, Any] = {}  # field -> _Pieces of a string, a list, a merged object, or a value
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if delta:
            fields = self.fields
            for key, value in delta.items():
                if value is None:
                    continue
                if key == "role":
                    self.role = value
                elif key == "tool_calls":
                    self._add_tool_calls(value)
                elif isinstance(value, str):
                    pieces = fields.get(key)
                    if type(pieces) is _Pieces:
                        pieces.append(value)
                    else:
                        fields[key] = _Pieces((value,))
                elif isinstance(value, list):
                    fields.setdefault(key, []).extend(value)
                elif isinstance(value, dict):
                    fields[key] = _merged(fields.get(key), value)
                else:
                    fields[key] = value
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if logprobs:
            mine = self.logprobs = self.logprobs or {"content": None, "refusal": None}
            for key in ("content", "refusal"):
                if logprobs.get(key):
                    mine[key] = (mine[key] or []) + logprobs[key]
        for key in choice:
            if key not in _CHOICE_OWN:
                self.extra[key] = choice[key]

    def _add_tool_calls(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            index = call.get("index", 0)
            slot = self.tool_calls.get(index)
            body = {key: value for key, value in call.items() if key != "index"}
            self.tool_calls[index] = body if slot is None else _merged(slot, body)

    def choice(self, index: int) -> dict[str, Any]:
        fields = self.fields
        message: dict[str, Any] = {"role": self.role, "content": None, "refusal": None}
        for key, value in fields.items():
            message[key] = "".join(value) if type(value) is _Pieces else value
        if self.tool_calls:
            message["tool_calls"] = [{"type": "function", **self.tool_calls[i]} for i in sorted(self.tool_calls)]
        return {"index": index, "message": message, "logprobs": self.logprobs, "finish_reason": self.finish_reason, **self.extra}


class _Pieces(list):  # type: ignore[type-arg]
    """A string field's pieces, joined once at the end; unlike a list field such as ``annotations``."""

    __slots__ = ()


def _merged(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` folded into ``old`` by the assembler's rule (a fresh dict: ``old`` may be a chunk's own)."""
    if old is None:
        return dict(new)
    merged = dict(old)
    for key, value in new.items():
        before = merged.get(key)
        if value is None:
            merged.setdefault(key, None)
        elif isinstance(value, str) and isinstance(before, str) and key not in ("id", "type"):
            merged[key] = before + value
        elif isinstance(value, list) and isinstance(before, list):
            merged[key] = before + value
        elif isinstance(value, dict) and isinstance(before, dict):
            merged[key] = _merged(before, value)
        else:
            merged[key] = value
    return merged


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[Chunk]:
    """A stored ``chat.completion`` as the chunks a live stream would have sent, every field included."""
    head: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for key, value in completion.items():
        if key not in _COMPLETION_OWN:
            head[key] = value
    chunks: list[Chunk] = []

    def emit(choices: list[dict[str, Any]], **extra: Any) -> None:
        chunks.append(Chunk.from_data({**head, "choices": choices, **extra}))

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        extra = {key: value for key, value in choice.items() if key not in _STORED_CHOICE_OWN}
        emit([{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""}, "finish_reason": None}])
        for key, value in sorted(message.items(), key=_thoughts_first):
            if value is None or key == "role" or value == "" or value == []:
                continue
            if key == "tool_calls":
                for position, call in enumerate(value):
                    emit([{"index": index, "delta": {"tool_calls": [{"index": position, **call}]}, "finish_reason": None}])
            elif key == "content":
                emit([{"index": index, "delta": {"content": value}, "logprobs": choice.get("logprobs"), "finish_reason": None}])
            else:
                emit([{"index": index, "delta": {key: value}, "finish_reason": None}])
        emit([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop", **extra}])
    if include_usage and completion.get("usage"):
        emit([], usage=completion["usage"])
    return chunks


_COMPLETION_OWN = frozenset({"id", "object", "created", "model", "choices", "usage"})
_STORED_CHOICE_OWN = frozenset({"index", "message", "logprobs", "finish_reason"})
