"""Anthropic's Messages API (``/messages``) behind OpenAI's chat format, and natively.

The pure functions translate both ways: ``chat_request`` (OpenAI body →
Messages body), ``chat_response`` (a ``message`` → ``chat.completion``) and
``AnthropicStream`` (Messages stream events → chunks); the provider class
only sends and receives. Answers carry the upstream's ``model``, as an
OpenAI upstream's do.

Clients that speak Messages themselves are served natively (``native``,
``native_stream``, ``forward``): their body goes upstream as sent, so
``cache_control`` markers and fields Sluice does not know survive, and the
answer comes back as Anthropic sent it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy import anthropic_usage
from proxy.completions import Chunk, Completion
from proxy.config import ProviderConfig
from proxy.errors import InvalidRequest, UpstreamProtocolError
from proxy.http import UpstreamClient, UpstreamResponse
from proxy.providers import translate as t
from proxy.providers.base import Call, ChunkStream, Provider, parse_json, translated, translated_stream
from proxy.sse import Comment

PROVIDER = "Anthropic"
API_VERSION = "2023-06-01"
MESSAGES_API = "messages"

# ``seed`` is dropped rather than refused: OpenAI itself promises only best-effort
# determinism for it, so no answer depends on it being honoured.
CHAT_PARAMETERS = t.CARRIED
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}

# Output limits (max_tokens) for a request that sets none: Anthropic requires
# one. First matching prefix wins, so the more specific names come first.
OUTPUT_LIMITS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 64000),
    ("claude-opus-4-1", 32000),
    ("claude-opus-4", 32000),
    ("claude-sonnet-4", 64000),
    ("claude-haiku-4", 64000),
    ("claude-3-7-sonnet", 64000),
    ("claude-3-5", 8192),
    ("claude-3", 4096),
)
DEFAULT_OUTPUT_LIMIT = 4096

# The same budgets as Gemini's (Google's OpenAI-compatibility mapping), floored
# at Anthropic's minimum of 1024; ``none`` leaves thinking off.
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
MIN_THINKING_BUDGET = 1024

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def output_limit(model: str) -> int:
    """The model's largest ``max_tokens``: what a request that sets none asks for."""
    for prefix, limit in OUTPUT_LIMITS:
        if model.startswith(prefix):
            return limit
    return DEFAULT_OUTPUT_LIMIT


# -- OpenAI request → Messages request -------------------------------------------------------


def chat_request(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Messages body for an OpenAI chat request; raises ``InvalidRequest``."""
    t.check_parameters(body, CHAT_PARAMETERS, PROVIDER)
    if t.response_format(body)[0] != "text":
        raise t.unsupported("A JSON response_format", PROVIDER, "response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("'messages' must be a list of message objects.", param="messages")
    system, turns = _turns(messages)
    wire: dict[str, Any] = {"model": model, "messages": turns, **t.sampling(body, SAMPLING, "max_tokens", "stop_sequences")}
    wire.setdefault("max_tokens", output_limit(model))
    if system:
        wire["system"] = system
    if body.get("user"):
        wire["metadata"] = {"user_id": str(body["user"])}
    thinking = _thinking(body.get("reasoning_effort"), wire["max_tokens"])
    if thinking:
        wire["thinking"] = thinking
    _add_tools(wire, body)
    if stream:
        wire["stream"] = True
    return wire


def _turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks, and the turns with consecutive same-role messages merged.

    Merging puts the results of parallel tool calls in one user turn, first,
    as Anthropic requires after a turn with several ``tool_use`` blocks.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, msg in enumerate(messages):
        param = f"messages[{index}]"
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(msg.get("content"), f"{param}.content"))
            continue
        if role == "user":
            wire_role, blocks = "user", _user_blocks(msg.get("content"), f"{param}.content")
        elif role == "assistant":
            wire_role, blocks = "assistant", _assistant_blocks(msg, param)
        elif role == "tool":
            wire_role, blocks = "user", [_tool_result(msg, param)]
        else:
            raise t.unsupported(f"The message role {role!r}", PROVIDER, f"{param}.role")
        t.add_turn(turns, wire_role, "content", blocks)
    return system, turns


def _texts(content: Any, param: str) -> list[dict[str, Any]]:
    """Text blocks; Anthropic rejects empty ones, so those are left out."""
    return [{"type": "text", "text": text} for text in t.text_parts(content, param, PROVIDER) if text]


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _texts(content, param)
    blocks = []
    for index, part in enumerate(content):
        block = _user_block(part, f"{param}[{index}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _user_block(part: Any, param: str) -> dict[str, Any] | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = str(part.get("text") or "")
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = str((image.get("url") if isinstance(image, dict) else image) or "")
        return {"type": "image", "source": _source(url, param)}
    if kind == "file":
        return _document(part.get("file") or {}, param)
    raise t.unsupported(f"A content part of type {kind!r}", PROVIDER, param)


def _source(url: str, param: str) -> dict[str, Any]:
    """Data URLs travel inline; http(s) URLs are fetched by Anthropic itself."""
    data = t.parse_data_url(url, param)
    if data is not None:
        return {"type": "base64", "media_type": data.mime, "data": data.data}
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest("An image URL must be an http(s) URL or a data URL.", param=param)
    return {"type": "url", "url": url}


def _document(file: dict[str, Any], param: str) -> dict[str, Any]:
    """A PDF given as a data URL; an OpenAI ``file_id`` names nothing Anthropic has."""
    data = t.parse_data_url(str(file.get("file_data") or ""), param)
    if data is None:
        raise t.unsupported("A file without file_data as a data URL", PROVIDER, param)
    return {"type": "document", "source": {"type": "base64", "media_type": data.mime, "data": data.data}}


def _assistant_blocks(msg: dict[str, Any], param: str) -> list[dict[str, Any]]:
    """Text, then one ``tool_use`` per call, ids kept so the results can name them."""
    blocks = _texts(msg.get("content"), f"{param}.content")
    for position, call in enumerate(msg.get("tool_calls") or ()):
        call_param = f"{param}.tool_calls[{position}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
            raise InvalidRequest("A tool call needs an id and a function name.", param=call_param)
        arguments = t.call_arguments(function.get("arguments"), f"{call_param}.function.arguments")
        blocks.append({"type": "tool_use", "id": str(call["id"]), "name": str(function["name"]), "input": arguments})
    return blocks


def _tool_result(msg: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not call_id:
        raise InvalidRequest("A tool message needs the tool_call_id it answers.", param=f"{param}.tool_call_id")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": str(call_id)}
    content = _texts(msg.get("content"), f"{param}.content")
    if content:
        result["content"] = content
    return result


def _thinking(effort: Any, max_tokens: Any) -> dict[str, Any] | None:
    """Extended thinking for ``reasoning_effort``; OpenAI counts reasoning inside the token
    limit, so the budget is kept below ``max_tokens`` as Anthropic requires."""
    if effort is None or effort == "none":
        return None
    if effort not in THINKING_BUDGETS:
        raise InvalidRequest(f"Invalid reasoning_effort: {effort!r}.", param="reasoning_effort")
    budget = THINKING_BUDGETS[effort]
    if isinstance(max_tokens, int):
        budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(
            f"reasoning_effort needs max_tokens above {MIN_THINKING_BUDGET} on Anthropic, whose smallest "
            f"thinking budget is {MIN_THINKING_BUDGET} tokens.",
            param="reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _add_tools(wire: dict[str, Any], body: dict[str, Any]) -> None:
    choice = t.tool_choice(body)
    functions = t.function_tools(body, choice, PROVIDER)
    if not functions:
        return
    wire["tools"] = [_tool(function) for function in functions]
    wire_choice: dict[str, Any] | None = None
    if choice.mode == "none":
        wire_choice = {"type": "none"}
    elif choice.mode == "required" and len(choice.names) == 1:
        wire_choice = {"type": "tool", "name": choice.names[0]}
    elif choice.mode == "required":
        wire_choice = {"type": "any"}
    elif choice.given or body.get("parallel_tool_calls") is False:
        wire_choice = {"type": "auto"}
    if wire_choice is not None and body.get("parallel_tool_calls") is False and choice.mode != "none":
        wire_choice["disable_parallel_tool_use"] = True
    if wire_choice is not None:
        wire["tool_choice"] = wire_choice


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


# -- Messages answer → OpenAI answer ---------------------------------------------------------


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def completion_id(message_id: Any) -> str:
    """``chatcmpl-`` plus the tail of Anthropic's ``msg_…`` id, so the two can be matched in logs."""
    return t.completion_id(str(message_id).removeprefix("msg_") if message_id else None)


def chat_response(data: dict[str, Any]) -> dict[str, Any]:
    """A Messages ``message`` as a ``chat.completion``."""
    texts, thoughts, calls = [], [], []
    for block in data.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thoughts.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            calls.append(t.tool_call(str(block.get("id")), str(block.get("name", "")), t.arguments_text(block.get("input"))))
    msg = t.message("".join(texts) or None, calls, "".join(thoughts) or None)
    choice = t.choice(0, msg, finish_reason(data.get("stop_reason")))
    return t.completion(completion_id(data.get("id")), str(data.get("model") or ""), [choice], anthropic_usage.to_hub(data.get("usage")))


@dataclass(slots=True)
class AnthropicStream:
    """Messages stream events in, ``chat.completion.chunk`` dicts out.

    ``message_start`` brings the input usage and ``message_delta`` the output
    usage (newer API versions repeat the input counts there): they are merged
    into the usage-only chunk that ends the stream.
    """

    _builder: t.ChunkBuilder | None = None
    _usage: dict[str, Any] = field(default_factory=dict)
    _call_has_arguments: bool = True  # false while an open tool_use block has sent no arguments yet
    _stopped: bool = False

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "error":
            raise _stream_error(event)
        self._merge_usage(event_usage(event))
        if kind == "message_start":
            message = event.get("message") or {}
            self._builder = t.ChunkBuilder(str(message.get("model") or ""), completion_id(message.get("id")))
            return _some(self._builder.delta(0))
        builder = self._builder
        if builder is None:
            if kind == "ping":
                return []
            raise UpstreamProtocolError(f"upstream stream began with {kind!r}, not message_start")
        if kind == "content_block_start":
            return _some(self._block_start(builder, event.get("content_block") or {}))
        if kind == "content_block_delta":
            return _some(self._block_delta(builder, event.get("delta") or {}))
        if kind == "content_block_stop" and not self._call_has_arguments:
            self._call_has_arguments = True  # a tool called with no arguments still sends a JSON object
            return _some(builder.delta(0, arguments="{}"))
        if kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            return _some(builder.delta(0, finish=finish_reason(reason))) if reason else []
        if kind == "message_stop":
            self._stopped = True
        return []

    def _block_start(self, builder: t.ChunkBuilder, block: dict[str, Any]) -> dict[str, Any] | None:
        kind = block.get("type")
        if kind == "text":
            return builder.delta(0, content=block.get("text") or None)
        if kind == "thinking":
            return builder.delta(0, reasoning=block.get("thinking") or None)
        if kind == "tool_use":
            arguments = t.arguments_text(block["input"]) if block.get("input") else ""
            self._call_has_arguments = bool(arguments)
            return builder.delta(0, calls=[(str(block.get("id")), str(block.get("name", "")), arguments)])
        return None

    def _block_delta(self, builder: t.ChunkBuilder, delta: dict[str, Any]) -> dict[str, Any] | None:
        kind = delta.get("type")
        if kind == "text_delta":
            return builder.delta(0, content=delta.get("text") or None)
        if kind == "thinking_delta":
            return builder.delta(0, reasoning=delta.get("thinking") or None)
        if kind == "input_json_delta" and delta.get("partial_json"):
            self._call_has_arguments = True
            return builder.delta(0, arguments=delta["partial_json"])
        return None  # signature_delta, citations_delta: nothing an OpenAI client reads

    def _merge_usage(self, data: dict[str, Any] | None) -> None:
        for name, value in (data or {}).items():
            if value is not None:
                self._usage[name] = value

    def close(self) -> list[dict[str, Any]]:
        """The usage chunk once the upstream closed; raises if it never sent ``message_stop``."""
        if self._builder is None or not self._stopped:
            raise UpstreamProtocolError("upstream stream ended before message_stop")
        self._builder.require_finished()
        final = anthropic_usage.to_hub(self._usage)
        return [self._builder.usage_chunk(final)] if final else []


def event_usage(event: dict[str, Any]) -> dict[str, Any] | None:
    """The Anthropic usage one stream event carries: ``message_start``'s input counts,
    ``message_delta``'s output counts. Merged in order (later non-null values win),
    they are the ``usage`` to give ``anthropic_usage.to_hub``, native streams included."""
    kind = event.get("type")
    if kind == "message_start":
        return (event.get("message") or {}).get("usage")
    if kind == "message_delta":
        return event.get("usage")
    return None


def _some(chunk: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [chunk] if chunk is not None else []


def _stream_error(event: dict[str, Any]) -> UpstreamProtocolError:
    """An ``error`` event after the stream began (``overloaded_error`` mid-answer and the like)."""
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    kind = error.get("type") if isinstance(error.get("type"), str) else None
    return UpstreamProtocolError(f"upstream stream failed: {error.get('message') or 'unknown error'}", type=kind)


def model_ids(data: dict[str, Any]) -> list[str]:
    return [m["id"] for m in data.get("data") or () if isinstance(m, dict) and isinstance(m.get("id"), str)]


# -- the provider ----------------------------------------------------------------------------


class AnthropicProvider(Provider):
    """Speaks the Messages API; the credential goes in ``x-api-key``, never anywhere else."""

    def __init__(self, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(config, client)
        self._base_url = config.base_url
        self._messages_url = f"{config.base_url}/messages"

    def _headers(self, authorization: str | None, beta: str | None = None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json", "anthropic-version": API_VERSION}
        key = self.credential(authorization)
        if key:
            headers["x-api-key"] = key
        if beta:
            headers["anthropic-beta"] = beta
        return headers

    def _call_headers(self, call: Call) -> dict[str, str]:
        """A call's headers: its credential, and the beta features its client asked for."""
        return self._headers(call.authorization, call.headers.get("anthropic-beta"))

    # -- Chat Completions, translated --

    async def chat(self, call: Call) -> Completion:
        payload = orjson.dumps(chat_request(call.body, call.model, stream=False))
        response = await self._request("POST", self._messages_url, self._call_headers(call), payload)
        return Completion.from_data(chat_response(parse_json(await response.read())))

    async def chat_stream(self, call: Call) -> ChunkStream:
        payload = orjson.dumps(chat_request(call.body, call.model, stream=True))
        response = await self._request("POST", self._messages_url, self._call_headers(call), payload)
        return ChunkStream(response, translated_stream(response.sse_batches(), AnthropicStream()))

    async def embed(self, call: Call) -> Completion:
        raise InvalidRequest("Anthropic has no embeddings API; route embeddings to another provider.", param="model")

    async def list_models(self, authorization: str | None) -> list[str]:
        """Every page of ``GET models`` (at most 1000 a page, then ``after_id``)."""
        ids: list[str] = []
        url = f"{self._base_url}/models?limit=1000"
        while True:
            data = parse_json(await (await self._request("GET", url, self._headers(authorization))).read())
            ids.extend(model_ids(data))
            if not data.get("has_more") or not data.get("last_id"):
                return ids
            url = f"{self._base_url}/models?limit=1000&after_id={data['last_id']}"

    # -- Messages, native --

    def speaks(self, api: str) -> bool:
        return api == MESSAGES_API

    async def native(self, api: str, call: Call) -> Completion:
        response = await self._request("POST", self._messages_url, self._call_headers(call), _native_payload(call, stream=False))
        body = await response.read()
        return Completion(body, parse_json(body))

    async def native_stream(self, api: str, call: Call) -> ChunkStream:
        response = await self._request("POST", self._messages_url, self._call_headers(call), _native_payload(call, stream=True))
        return ChunkStream(response, _native_chunks(response))

    async def forward(self, method: str, path: str, call: Call) -> tuple[int, bytes]:
        payload = _native_payload(call) if method != "GET" else None
        response = await self.client.request(method, f"{self._base_url}/{path}", self._call_headers(call), payload)
        return response.status, await response.read()


def _native_payload(call: Call, stream: bool | None = None) -> bytes:
    """The client's bytes when nothing must change, else the body with only ``model`` (and ``stream``) set."""
    changes: dict[str, Any] = {}
    if call.body.get("model") != call.model:
        changes["model"] = call.model
    if stream is not None and bool(call.body.get("stream")) != stream:
        changes["stream"] = stream
    if not changes and call.raw is not None:
        return call.raw
    return orjson.dumps({**call.body, **changes})


async def _native_chunks(response: UpstreamResponse) -> AsyncIterator[list[Chunk] | Comment]:
    """Each event as it came, framed again with its name (which Anthropic sets equal to its ``type``)."""
    stopped = False

    def event(data: bytes) -> list[Chunk]:
        nonlocal stopped
        parsed = parse_json(data)
        kind = parsed.get("type")
        if kind == "error":
            raise _stream_error(parsed)
        stopped = stopped or kind == "message_stop"
        return [Chunk(data, parsed, frame=b"event: " + str(kind).encode() + b"\ndata: " + data + b"\n\n")]

    async for chunks in translated(response.sse_batches(), event):
        yield chunks
    if not stopped:
        raise UpstreamProtocolError("upstream stream ended before message_stop")
