"""A fake Anthropic upstream (the Messages API).

Serves ``POST /v1/messages`` (JSON, or SSE with ``stream: true``),
``POST /v1/messages/count_tokens`` and ``GET /v1/models`` (paged by
``after_id``). It checks requests the way the real API does where
translation bugs would hide: the ``x-api-key`` and ``anthropic-version``
headers, a required ``max_tokens``, unknown fields, roles, empty text blocks,
``tool_result`` blocks that answer no ``tool_use`` of the turn before, a
thinking budget not below ``max_tokens``; errors come in Anthropic's shape.
Payloads validate against the ``anthropic`` SDK's types
(tests/test_fakes_anthropic.py).

Unscripted answers echo the last user turn (``echo: <text>``; images as
``[image/png]`` or ``[url]``, tool results as their text); with tools offered
and a plain user turn last, the model calls the first allowed tool with
``{"city": "Paris"}``; with thinking enabled a ``thinking`` block comes
first. ``max_tokens`` counts words and ends with ``max_tokens``;
``stop_sequences`` cut the text. Usage counts words, and a request with
``cache_control`` markers reads the marked prefix from the cache when it saw
the same prefix before (else it writes it), as prompt caching does.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.fakes.server import FakeServer

_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # 2023-06-01, what Sluice sends, or a newer SDK's date
INVALID_KEY = "invalid-key"
SIGNATURE = "EqQBCkYIBxgCKkD-fake-signature"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

REQUEST_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
}
BLOCK_TYPES = {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
TOOL_CHOICES = {"auto", "any", "tool", "none"}

_ids = itertools.count(1)


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def usage(input_tokens: int, output_tokens: int, *, cache_read: int = 0, cache_write: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message(
    content: list[dict[str, Any]],
    stop_reason: str = "end_turn",
    *,
    model: str = "claude-sonnet-4-5-20250929",
    usage_data: dict[str, Any] | None = None,
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    """A Messages ``message`` answer."""
    return {
        "id": f"msg_01Fake{next(_ids):018d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_data or usage(10, 5),
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, arguments: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id or f"toolu_01Fake{next(_ids):016d}", "name": name, "input": arguments}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": SIGNATURE}


def stream_events(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """How the API streams ``answer``: usage split between ``message_start`` and ``message_delta``,
    text a word per delta, tool input in two JSON pieces, a thinking block's signature last."""
    full = answer["usage"]
    start_usage = {**full, "output_tokens": 1}
    head = {**answer, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": head}, {"type": "ping"}]
    for index, block in enumerate(answer["content"]):
        events.extend(_block_events(index, block))
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": answer.get("stop_sequence")},
            "usage": {"output_tokens": full["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    def delta(body: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": index, "delta": body}

    kind = block["type"]
    if kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [delta({"type": "text_delta", "text": word}) for word in _split_words(block["text"])]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [delta({"type": "thinking_delta", "thinking": word}) for word in _split_words(block["thinking"])]
        deltas.append(delta({"type": "signature_delta", "signature": block["signature"]}))
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = orjson.dumps(block["input"]).decode()
        middle = len(arguments) // 2
        pieces = ["", arguments[:middle], arguments[middle:]] if block["input"] else [""]
        deltas = [delta({"type": "input_json_delta", "partial_json": piece}) for piece in pieces]
    else:
        raise ValueError(f"cannot stream a {kind} block")
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *deltas,
        {"type": "content_block_stop", "index": index},
    ]


def _split_words(value: str) -> list[str]:
    words = value.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(status: int, message_text: str) -> Response:
    return _json(error_body(ERROR_TYPES.get(status, "api_error"), message_text), status)


class FakeAnthropic(FakeServer):
    models = [
        "claude-opus-4-5-20251101",
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-1-20250805",
        "claude-3-5-haiku-20241022",
    ]

    def __init__(self) -> None:
        super().__init__()
        self.cached_prefixes: set[bytes] = set()

    def reset(self) -> None:
        super().reset()
        self.cached_prefixes.clear()

    def stream_frame(self, item: Any) -> bytes:
        """Each event is named after its ``type``, as the real API sends it."""
        if isinstance(item, bytes):
            return item
        return b"event: " + item["type"].encode() + b"\ndata: " + orjson.dumps(item) + b"\n\n"

    async def default_reply(self, request: Request, body: bytes) -> Response:
        key = request.headers.get("x-api-key") or _bearer(request.headers.get("authorization"))
        if not key:
            return _error(401, "x-api-key header is required")
        if key == INVALID_KEY:
            return _error(401, "invalid x-api-key")
        if not _VERSION.match(request.headers.get("anthropic-version") or ""):
            return _error(400, "anthropic-version: header is required")
        path = request.url.path
        if request.method == "GET" and path == "/v1/models":
            return self._list(request)
        if request.method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return _error(404, f"Not found: {request.method} {path}")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "There was an error parsing the body of your request.")
        counting = path.endswith("/count_tokens")
        problem = request_problem(payload, counting)
        if problem:
            return _error(400, problem)
        if payload["model"] not in self.models:
            return _error(404, f"model: {payload['model']}")
        if counting:
            return _json({"input_tokens": _prompt_tokens(payload)})
        answer = self.answer(payload)
        if payload.get("stream"):
            frames = [self.stream_frame(event) for event in stream_events(answer)]
            return StreamingResponse(_iterate(frames), media_type="text/event-stream")
        return _json(answer)

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The ``message`` for a valid request."""
        blocks: list[dict[str, Any]] = []
        if (payload.get("thinking") or {}).get("type") == "enabled":
            blocks.append(thinking("The user wants an echo."))
        call = _tool_call(payload)
        if call is not None:
            blocks.append(call)
            reason, stop_sequence = "tool_use", None
        else:
            reply, reason, stop_sequence = _reply(payload)
            blocks.append(text(reply))
        output = sum(len((b.get("text") or b.get("thinking") or "x").split()) for b in blocks)
        return message(blocks, reason, model=payload["model"], usage_data=self._usage(payload, output), stop_sequence=stop_sequence)

    def _usage(self, payload: dict[str, Any], output: int) -> dict[str, Any]:
        """Prompt caching: the prefix up to the last ``cache_control`` marker is written once, then read."""
        report = self.report_usage
        if report:  # input_tokens counts only what was neither read from nor written to the cache
            plain = report.prompt - report.cached - report.written
            return usage(plain, report.completion, cache_read=report.cached, cache_write=report.written)
        prompt = _prompt_tokens(payload)
        prefix = _cached_prefix(payload)
        if prefix is None:
            return usage(prompt, output)
        size = min(prompt, max(1, len(prefix) // 8))
        if prefix in self.cached_prefixes:
            return usage(prompt - size, output, cache_read=size)
        self.cached_prefixes.add(prefix)
        return usage(prompt - size, output, cache_write=size)

    def _list(self, request: Request) -> Response:
        limit = int(request.query_params.get("limit") or 20)
        after = request.query_params.get("after_id")
        start = self.models.index(after) + 1 if after in self.models else 0
        page = self.models[start : start + limit]
        data = [
            {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"} for name in page
        ]
        return _json(
            {
                "data": data,
                "has_more": start + limit < len(self.models),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )


def _bearer(value: str | None) -> str | None:
    """Newer SDKs send the key as ``Authorization: Bearer``, which the API accepts like ``x-api-key``."""
    scheme, _, token = (value or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def _iterate(frames: list[bytes]):  # type: ignore[no-untyped-def]
    for frame in frames:
        yield frame


# -- request checks, as the real API answers them ---------------------------------------------


def request_problem(payload: Any, counting: bool = False) -> str | None:
    """The 400 message the real API would give, or None for a request it accepts."""
    if not isinstance(payload, dict):
        return "Input should be a valid dictionary"
    for name in payload:
        if name not in REQUEST_FIELDS or (counting and name in ("max_tokens", "stream", "stop_sequences")):
            return f"{name}: Extra inputs are not permitted"
    if not isinstance(payload.get("model"), str):
        return "model: Field required"
    if not counting and not isinstance(payload.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required" if messages is None else "messages: at least one message is required"
    previous_calls: set[str] = set()
    for index, msg in enumerate(messages):
        problem = _message_problem(msg, f"messages.{index}", previous_calls)
        if problem:
            return problem
        previous_calls = {b["id"] for b in _blocks(msg) if b.get("type") == "tool_use"}
    system = payload.get("system")
    if isinstance(system, list) and any(b.get("type") != "text" or not b.get("text") for b in system):
        return "system: text content blocks must be non-empty"
    return _tools_problem(payload) or _thinking_problem(payload)


def _blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    content = msg.get("content")
    return [text(content)] if isinstance(content, str) else list(content or ())


def _message_problem(msg: Any, where: str, previous_calls: set[str]) -> str | None:
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        return f"{where}.role: Input should be 'user' or 'assistant'"
    blocks = _blocks(msg)
    if not blocks:
        return f"{where}: all messages must have non-empty content"
    answered = []
    for position, block in enumerate(blocks):
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            return f"{where}.content.{position}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags"
        if kind == "text" and not block.get("text"):
            return f"{where}.content.{position}.text: text content blocks must be non-empty"
        if kind == "tool_result":
            answered.append(block.get("tool_use_id"))
        if kind in ("tool_use", "tool_result") and msg["role"] != ("assistant" if kind == "tool_use" else "user"):
            return f"{where}.content.{position}: {kind} blocks are not allowed in {msg['role']} messages"
        if kind == "image" and (block.get("source") or {}).get("type") not in ("base64", "url"):
            return f"{where}.content.{position}.image.source: Input tag does not match any of the expected tags"
    for call_id in answered:
        if call_id not in previous_calls:
            return (
                f"{where}.content: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. Each `tool_result` "
                "block must have a corresponding `tool_use` block in the previous message."
            )
    return None


def _tools_problem(payload: dict[str, Any]) -> str | None:
    tools = payload.get("tools") or []
    for index, tool in enumerate(tools):
        if not tool.get("name"):
            return f"tools.{index}.name: Field required"
        if (tool.get("input_schema") or {}).get("type") != "object":
            return f"tools.{index}.custom.input_schema.type: Input should be 'object'"
    choice = payload.get("tool_choice")
    if choice is not None:
        if choice.get("type") not in TOOL_CHOICES:
            return "tool_choice.type: Input tag does not match any of the expected tags"
        if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in tools}:
            return f"tool_choice: Tool '{choice.get('name')}' not found in tools"
    return None


def _thinking_problem(payload: dict[str, Any]) -> str | None:
    config = payload.get("thinking")
    if not config or config.get("type") != "enabled":
        return None
    budget = config.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if "max_tokens" in payload and budget >= payload["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    return None


# -- what the fake model says -----------------------------------------------------------------


def _tool_call(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A call of the first allowed tool when tools are offered and a plain user turn is last."""
    tools = payload.get("tools") or []
    choice = payload.get("tool_choice") or {"type": "auto"}
    last = payload["messages"][-1]
    if not tools or choice["type"] == "none" or last["role"] != "user":
        return None
    if any(b.get("type") == "tool_result" for b in _blocks(last)):
        return None
    name = choice["name"] if choice["type"] == "tool" else tools[0]["name"]
    return tool_use(name, {"city": "Paris"})


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The last user turn as text; images as ``[media type]`` or ``[url]``, tool results as their text."""
    for msg in reversed(messages):
        if msg["role"] == "user":
            return " ".join(_block_text(block) for block in _blocks(msg))
    return ""


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return block["text"]
    if kind in ("image", "document"):
        source = block.get("source") or {}
        return f"[{source.get('media_type') or source.get('url')}]"
    if kind == "tool_result":
        content = block.get("content")
        return content if isinstance(content, str) else " ".join(_block_text(b) for b in content or ())
    return ""


def _reply(payload: dict[str, Any]) -> tuple[str, str, str | None]:
    reply = f"echo: {last_user_text(payload['messages'])}"
    for stop in payload.get("stop_sequences") or ():
        if stop in reply:
            return reply[: reply.index(stop)], "stop_sequence", stop
    limit = payload["max_tokens"]
    if len(reply.split()) > limit:
        return " ".join(reply.split(" ")[:limit]), "max_tokens", None
    return reply, "end_turn", None


def _prompt_tokens(payload: dict[str, Any]) -> int:
    blocks = [b for m in payload["messages"] for b in _blocks(m)]
    system = payload.get("system")
    blocks += [text(system)] if isinstance(system, str) else list(system or ())
    return max(1, sum(len(_block_text(b).split()) or 1 for b in blocks))


def _cached_prefix(payload: dict[str, Any]) -> bytes | None:
    """The request up to and including the last block with ``cache_control``, or None."""
    system = payload.get("system")
    blocks = (list(system) if isinstance(system, list) else []) + [b for m in payload["messages"] for b in _blocks(m)]
    marked = [index for index, block in enumerate(blocks) if block.get("cache_control")]
    if not marked:
        return None
    return orjson.dumps(blocks[: marked[-1] + 1], option=orjson.OPT_SORT_KEYS)
