"""A fake Ollama upstream: ``/api/chat`` (JSON and NDJSON), ``/api/embed``, ``/api/tags``.

Like the real server it streams unless told ``"stream": false``, answers
errors as ``{"error": "text"}``, refuses unknown models, images that are not
base64, tool call arguments that are not objects, ``think`` on models that
cannot think and tools on models without tool support. Payloads validate
against the ``ollama`` package's types (tests/test_fakes_gemini_ollama.py).

Unscripted answers echo the last user or tool message (``echo: <text>``,
each image as ``[image]``); with tools offered and a user message last, the
model calls the first tool. ``num_predict`` counts words and ends with
``done_reason: length``; ``stop`` cuts the text; ``format`` answers JSON.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.fakes.server import FakeServer, Reply

ROLES = ("system", "user", "assistant", "tool")
THINKING_MODELS = {"qwen3:latest"}
NO_TOOL_MODELS = {"llava:latest", "nomic-embed-text:latest"}
EMBEDDING_MODELS = {"nomic-embed-text:latest"}


def error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


def _created_at() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _words(text: str) -> int:
    return len(text.split())


def full_name(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def message_line(model: str, content: str = "", **message: Any) -> dict[str, Any]:
    """One streamed line that is not the last."""
    return {
        "model": model,
        "created_at": _created_at(),
        "message": {"role": "assistant", "content": content, **message},
        "done": False,
    }


def done_line(model: str, prompt: int = 11, completion: int = 7, reason: str = "stop", content: str = "", **message: Any) -> dict[str, Any]:
    """The last line of a stream, or a whole non-streamed answer when ``content`` is the answer."""
    return {
        "model": model,
        "created_at": _created_at(),
        "message": {"role": "assistant", "content": content, **message},
        "done": True,
        "done_reason": reason,
        "total_duration": 5_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 1_000_000,
        "eval_count": completion,
        "eval_duration": 3_000_000,
    }


class FakeOllama(FakeServer):
    models = ["llama3.1:latest", "qwen3:latest", "llava:latest", "nomic-embed-text:latest"]

    stream_media_type = "application/x-ndjson"

    def stream_frame(self, item: Any) -> bytes:
        return (item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n"

    def reply_stream(self, lines: list[dict[str, Any]], **kwargs: Any) -> Reply:
        return Reply(chunks=lines, **kwargs)

    async def default_reply(self, request: Request, body: bytes) -> Response:
        path = request.url.path
        routes = {"/api/chat": "POST", "/api/embed": "POST", "/api/tags": "GET"}
        if path not in routes:
            return Response(b"404 page not found", status_code=404, media_type="text/plain")
        if request.method != routes[path]:
            return Response(b"405 method not allowed", status_code=405, media_type="text/plain")
        if path == "/api/tags":
            return _json({"models": [_model_info(name) for name in self.models]})
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(error_body("invalid character in request body"), 400)
        model = payload.get("model")
        if not model:
            return _json(error_body("model is required"), 400)
        if full_name(model) not in self.models:
            return _json(error_body(f'model "{model}" not found, try pulling it first'), 404)
        if path == "/api/embed":
            return self._embed(payload)
        problem = request_problem(payload)
        if problem:
            return _json(error_body(problem), 400)
        return self._chat(payload)

    def _chat(self, payload: dict[str, Any]) -> Response:
        model = payload["model"]
        name = full_name(model)
        if payload.get("think") and name not in THINKING_MODELS:
            return _json(error_body(f'"{model}" does not support thinking'), 400)
        if payload.get("tools") and name in NO_TOOL_MODELS:
            return _json(error_body(f"registry.ollama.ai/library/{name} does not support tools"), 400)
        lines = answer_lines(payload)
        if self.report_usage:  # Ollama reports no prompt caching
            lines[-1].update(prompt_eval_count=self.report_usage.prompt, eval_count=self.report_usage.completion)
        if payload.get("stream") is False:
            return _json(_merge(lines))
        frames = [self.stream_frame(line) for line in lines]

        async def body():  # type: ignore[no-untyped-def]
            for frame in frames:
                yield frame

        return StreamingResponse(body(), media_type=self.stream_media_type)

    def _embed(self, payload: dict[str, Any]) -> Response:
        if full_name(payload["model"]) not in EMBEDDING_MODELS:
            return _json(error_body(f'"{payload["model"]}" does not support embeddings'), 400)
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        if not all(isinstance(item, str) for item in items):
            return _json(error_body("invalid input type"), 400)
        size = payload.get("dimensions") or 3
        vectors = [([float(len(text) % 7), 0.5, -0.25] + [0.0] * size)[:size] for text in items]
        return _json(
            {
                "model": payload["model"],
                "embeddings": vectors,
                "total_duration": 2_000_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(max(1, _words(text)) for text in items),
            }
        )


def request_problem(payload: dict[str, Any]) -> str | None:
    """The 400 message the real server would give, or None for a request it accepts."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return "messages must be an array"
    for message in messages:
        if message.get("role") not in ROLES:
            return f"invalid role: {message.get('role')}"
        if not isinstance(message.get("content", ""), str):
            return "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
        for image in message.get("images") or ():
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError, TypeError):
                return "illegal base64 data at input byte 4"
        for call in message.get("tool_calls") or ():
            if not isinstance((call.get("function") or {}).get("arguments"), dict):
                return (
                    "json: cannot unmarshal string into Go struct field ToolCallFunction.messages.tool_calls.function"
                    ".arguments of type api.ToolCallFunctionArguments"
                )
    fmt = payload.get("format")
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        return f"invalid format: {fmt!r}"
    if not isinstance(payload.get("options") or {}, dict):
        return "json: cannot unmarshal into Go struct field ChatRequest.options"
    return None


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") in ("user", "tool"):
            images = " ".join("[image]" for _ in message.get("images") or ())
            return " ".join(p for p in (message.get("content", ""), images) if p)
    return ""


def answer_lines(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The NDJSON lines of the answer: thinking, then content word by word (or tool calls), then done."""
    model = payload["model"]
    messages = payload["messages"]
    options = payload.get("options") or {}
    prompt = max(1, sum(_words(m.get("content", "")) for m in messages))
    lines = [message_line(model, thinking="Thinking about it.")] if payload.get("think") else []
    if payload.get("tools") and messages and messages[-1].get("role") == "user":
        call = {"function": {"name": payload["tools"][0]["function"]["name"], "arguments": {"city": "Paris"}}}
        lines.append(message_line(model, tool_calls=[call]))
        return lines + [done_line(model, prompt, 3)]
    text = f"echo: {last_user_text(messages)}"
    if payload.get("format") is not None:
        text = orjson.dumps({"echo": last_user_text(messages)}).decode()
    for stop in options.get("stop") or ():
        if stop in text:
            text = text[: text.index(stop)]
    reason = "stop"
    limit = options.get("num_predict")
    if limit is not None and limit >= 0 and _words(text) > limit:
        text, reason = " ".join(text.split(" ")[:limit]), "length"
    words = text.split(" ")
    lines += [message_line(model, w if i == 0 else " " + w) for i, w in enumerate(words)]
    return lines + [done_line(model, prompt, _words(text), reason)]


def _merge(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A non-streamed answer: the done line carrying everything the stream said."""
    final = dict(lines[-1])
    message: dict[str, Any] = {"role": "assistant", "content": "".join(line["message"].get("content", "") for line in lines)}
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    if thinking:
        message["thinking"] = thinking
    calls = [call for line in lines for call in line["message"].get("tool_calls") or ()]
    if calls:
        message["tool_calls"] = calls
    final["message"] = message
    return final


def _model_info(name: str) -> dict[str, Any]:
    family = name.split(":")[0].rstrip("0123456789.")
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00.000000000Z",
        "size": 4_920_753_328,
        "digest": "a" * 64,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "8.0B",
            "quantization_level": "Q4_K_M",
        },
    }
