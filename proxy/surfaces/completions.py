"""Legacy completions, ``POST /v1/completions``: served natively by openai-type providers only.

There is no hub form of a bare prompt that other providers would answer the
same way, so this surface never bridges. Its streams are ``data:`` events of
``text_completion`` objects ending ``data: [DONE]``, as chat's are.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.completions import SSE_DONE
from proxy.errors import InvalidRequest
from proxy.surfaces.base import NativeAssembler, ParsedRequest, StreamRenderer, Surface, require_model, required, streaming


class CompletionsSurface(Surface):
    api = "completions"
    path = "/v1/completions"
    stream_end = SSE_DONE

    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        model = require_model(body)
        if not isinstance(required(body, "prompt"), (str, list)):
            raise InvalidRequest("'prompt' must be a string or an array.", param="prompt")
        return ParsedRequest(model, *streaming(body))

    def to_hub(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        raise InvalidRequest("Legacy completions are served by openai-type providers only.", param="model")

    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        """Never asked for: with no hub form, there is never a hub stream to render."""
        raise NotImplementedError("legacy completions are never bridged")

    def assembler(self) -> NativeAssembler:
        return _CompletionAssembler()

    def replay(self, answer: dict[str, Any], request: dict[str, Any]) -> bytes:
        head = {key: answer.get(key) for key in ("id", "object", "created", "model")}
        frames = [_frame({**head, "choices": [choice]}) for choice in answer.get("choices") or ()]
        if answer.get("usage") and (request.get("stream_options") or {}).get("include_usage"):
            frames.append(_frame({**head, "choices": [], "usage": answer["usage"]}))
        return b"".join(frames) + SSE_DONE


def _frame(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


class _CompletionAssembler:
    """Folds ``text_completion`` stream chunks into the whole ``text_completion``."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None

    def add(self, event: dict[str, Any]) -> None:
        if not self._head:
            self._head = {
                "id": event.get("id"),
                "object": "text_completion",
                "created": event.get("created"),
                "model": event.get("model"),
            }
        if event.get("usage"):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            state = self._choices.setdefault(
                choice.get("index", 0), {"text": [], "logprobs": None, "finish_reason": None}
            )
            state["text"].append(choice.get("text") or "")
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    @property
    def finished(self) -> bool:
        return bool(self._choices) and all(c["finish_reason"] for c in self._choices.values())

    def result(self) -> dict[str, Any]:
        choices = [
            {
                "text": "".join(state["text"]),
                "index": index,
                "logprobs": state["logprobs"],
                "finish_reason": state["finish_reason"],
            }
            for index, state in sorted(self._choices.items())
        ]
        data: dict[str, Any] = {**self._head, "choices": choices}
        if self._usage is not None:
            data["usage"] = self._usage
        return data
