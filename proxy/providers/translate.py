"""What the translating providers (Gemini, Ollama, Anthropic) share: ids, OpenAI's shapes, parameters.

Everything here is pure (no I/O), so each mapping is unit-tested without a
server. Provider modules keep what only their wire format needs; this module
holds what they must agree on, so they cannot drift apart in how they name
ids, shape usage, carry sampling parameters or refuse a parameter.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from proxy.errors import InvalidRequest, UpstreamProtocolError

_ALPHABET = string.ascii_letters + string.digits

# Parameters that describe the caller or the transport, never the answer: a
# provider that has no use for them drops them silently. ``parallel_tool_calls``
# is here because neither Gemini nor Ollama can be told to call one tool at a
# time; ``prediction`` only speeds up an answer OpenAI would give anyway.
IGNORED = frozenset(
    {
        "model",
        "messages",
        "input",
        "stream",
        "stream_options",
        "user",
        "store",
        "metadata",
        "parallel_tool_calls",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "prediction",
    }
)

# Parameters every translated provider carries to its wire; each adds those only its own can.
CARRIED = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "reasoning_effort",
    }
)

# Values that ask for OpenAI's default behaviour, so any provider honours them.
_NEUTRAL: dict[str, Any] = {"n": 1, "modalities": ["text"], "encoding_format": "float"}


def random_id(prefix: str, length: int) -> str:
    """Letters and digits like OpenAI's ids, from one ``urandom`` read (the modulo bias is harmless for ids)."""
    return prefix + "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in secrets.token_bytes(length))


def completion_id(upstream_id: str | None = None) -> str:
    """``chatcmpl-`` plus the upstream's own response id when it has one (easier to trace)."""
    return "chatcmpl-" + (upstream_id or random_id("", 29))


def tool_call_id() -> str:
    return random_id("call_", 24)


def now() -> int:
    return int(time.time())


# -- request side ---------------------------------------------------------------------------


def check_parameters(body: dict[str, Any], supported: frozenset[str], provider: str) -> None:
    """Reject, naming it, the first parameter this provider can neither map nor safely drop.

    A ``null`` or default value (``n: 1``, ``logprobs: false``, ``logit_bias: {}``)
    asks for nothing and passes, since SDKs and frameworks send those freely.
    """
    for name, value in body.items():
        if name in supported or name in IGNORED or _is_neutral(name, value):
            continue
        raise InvalidRequest(f"Unsupported parameter: '{name}' is not supported by {provider} providers.", param=name)


def _is_neutral(name: str, value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or _NEUTRAL.get(name, ...) == value


def unsupported(what: str, provider: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by {provider} providers.", param=param)


@dataclass(frozen=True, slots=True)
class DataURL:
    mime: str
    data: str  # base64


def parse_data_url(url: str, param: str) -> DataURL | None:
    """A ``data:`` URL as its media type and base64 payload; ``None`` for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidRequest("Invalid data URL: it has no ',' before its data.", param=param)
    mime, _, flags = header.partition(";")
    if flags.split(";")[-1] == "base64":
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("Invalid data URL: its data is not valid base64.", param=param) from None
        data = payload
    else:
        data = base64.b64encode(unquote_to_bytes(payload)).decode()
    return DataURL(mime or "text/plain", data)


def text_parts(content: Any, param: str, provider: str) -> list[str]:
    """The texts of a message whose content may only be text (system, tool, assistant)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequest("Message content must be a string or a list of content parts.", param=param)
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise unsupported(f"A content part of type {kind!r} in this message", provider, f"{param}[{index}]")
    return texts


def max_tokens(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` wins: it is the newer name and SDKs may send both."""
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def stop_sequences(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def sampling(body: dict[str, Any], names: dict[str, str], max_tokens_name: str, stop_name: str) -> dict[str, Any]:
    """The sampling parameters the client set, under the wire's names: ``names`` maps OpenAI's
    to the wire's; the output limit and the stop sequences go under their own two."""
    wire = {wire_name: body[name] for name, wire_name in names.items() if body.get(name) is not None}
    limit = max_tokens(body)
    if limit is not None:
        wire[max_tokens_name] = limit
    stop = stop_sequences(body)
    if stop:
        wire[stop_name] = stop
    return wire


def response_format(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``("text" | "json", schema or None)`` from OpenAI's ``response_format``."""
    spec = body.get("response_format")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if spec is None or kind == "text":
        return "text", None
    if kind == "json_object":
        return "json", None
    if kind == "json_schema":
        schema = (spec.get("json_schema") or {}).get("schema")
        return "json", schema if isinstance(schema, dict) else None
    raise InvalidRequest(f"Invalid response_format type: {kind!r}.", param="response_format")


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """OpenAI's ``tool_choice`` reduced to what both providers can express."""

    mode: str = "auto"  # auto | none | required
    names: tuple[str, ...] = ()  # functions the model may call; empty: all of them
    given: bool = False


def tool_choice(body: dict[str, Any]) -> ToolChoice:
    choice = body.get("tool_choice")
    if choice is None:
        return ToolChoice()
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice, given=True)
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        return ToolChoice("required", (str((choice.get("function") or {}).get("name")),), given=True)
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = tuple(str((t.get("function") or {}).get("name")) for t in allowed.get("tools") or ())
        mode = allowed.get("mode", "auto")
        if mode in ("auto", "required"):
            return ToolChoice(mode, names, given=True)
    raise InvalidRequest(f"Invalid tool_choice: {choice!r}.", param="tool_choice")


def function_tools(body: dict[str, Any], choice: ToolChoice, provider: str) -> list[dict[str, Any]]:
    """The ``function`` objects of ``tools``, narrowed to the names ``tool_choice`` allows."""
    functions = []
    for index, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(f"A tool of type {kind!r}", provider, f"tools[{index}]")
        function = tool["function"]
        if not choice.names or function.get("name") in choice.names:
            functions.append(function)
    return functions


def call_arguments(arguments: Any, param: str) -> dict[str, Any]:
    """A tool call's ``arguments`` JSON string as the object Gemini and Ollama want."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise InvalidRequest("Tool call arguments must be a JSON object.", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("Tool call arguments must be a JSON object.", param=param)
    return value


def add_turn(turns: list[dict[str, Any]], role: str, key: str, items: list[dict[str, Any]]) -> None:
    """Append a turn's ``items`` under ``key``, merged into the last turn when it has the same
    role: Gemini and Anthropic want alternating roles, parallel tool results in one turn."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def tool_call_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """Tool call id → function name, since tool results name only the id but both upstreams want the name."""
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and call.get("id"):
                names[call["id"]] = (call.get("function") or {}).get("name", "")
    return names


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    """``input`` as a list of texts; token arrays cannot be sent to either upstream."""
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) for item in items):
        raise InvalidRequest("'input' must be a string or a list of strings for this provider.", param="input")
    return items


def encoding_format(body: dict[str, Any]) -> str:
    value = body.get("encoding_format") or "float"
    if value not in ("float", "base64"):
        raise InvalidRequest(f"Invalid encoding_format: {value!r}.", param="encoding_format")
    return value


# -- answer side ----------------------------------------------------------------------------


def arguments_text(arguments: Any) -> str:
    """Tool call arguments as the JSON string OpenAI sends (upstreams send objects)."""
    return orjson.dumps(arguments if arguments is not None else {}).decode()


def tool_call(call_id: str, name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    """One OpenAI tool call; stream deltas carry an ``index``, messages do not."""
    call: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return call if index is None else {"index": index, **call}


def message(content: str | None, tool_calls: list[dict[str, Any]], reasoning: str | None = None) -> dict[str, Any]:
    """An assistant message; ``content`` is null only beside tool calls, as OpenAI does.

    ``reasoning`` (a thinking model's visible thoughts) becomes ``reasoning_content``.
    """
    text = (content or None) if tool_calls else (content or "")
    result: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if reasoning:
        result["reasoning_content"] = reasoning
    if tool_calls:
        result["tool_calls"] = tool_calls
    return result


def choice(index: int, msg: dict[str, Any], finish_reason: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "message": msg, "logprobs": logprobs, "finish_reason": finish_reason}


def completion(cid: str, model: str, choices: list[dict[str, Any]], usage_data: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
    }
    if usage_data is not None:
        data["usage"] = usage_data
    return data


def usage(
    prompt: int, completion_tokens: int, total: int | None = None, *, cached: int | None = None, reasoning: int | None = None
) -> dict[str, Any]:
    """OpenAI's usage; the detail objects appear only when the upstream reported them."""
    data: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": total if total is not None else prompt + completion_tokens,
    }
    if cached is not None:
        data["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        data["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return data


def token_logprob(token: str, logprob: float, top: list[tuple[str, float]] | None) -> dict[str, Any]:
    """One entry of OpenAI's ``logprobs.content``; ``bytes`` is the token's UTF-8, as OpenAI sends it."""
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in top or ()],
    }


def embeddings_list(
    vectors: list[list[float]], model: str, prompt_tokens: int, fmt: str
) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": index, "embedding": _encode_vector(vector, fmt)}
        for index, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _encode_vector(vector: list[float], fmt: str) -> list[float] | str:
    """``base64`` is little-endian float32, what OpenAI sends and its SDK asks for by default."""
    if fmt == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# -- streams --------------------------------------------------------------------------------


@dataclass(slots=True)
class _ChoiceState:
    started: bool = False
    tool_calls: int = 0
    finish_reason: str | None = None


@dataclass(slots=True)
class ChunkBuilder:
    """Builds the ``chat.completion.chunk``s of one translated stream.

    It remembers per choice what was already said, which decides the next
    delta: the role goes in the first, tool call indexes count up, and a
    choice that carried a tool call finishes with ``tool_calls`` whatever the
    upstream's own reason was (Gemini sends ``STOP`` in a chunk of its own
    after the call).
    """

    model: str
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=now)
    _choices: dict[int, _ChoiceState] = field(default_factory=dict)

    def delta(
        self,
        index: int,
        *,
        content: str | None = None,
        reasoning: str | None = None,
        calls: Sequence[tuple[str, str, str]] = (),
        arguments: str | None = None,
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The chunk saying this much more of choice ``index``; ``None`` when there is nothing new.

        ``reasoning`` goes out as ``reasoning_content`` (the field DeepSeek
        introduced and OpenAI-compatible clients read); ``arguments`` is more
        of the last call's arguments, for upstreams that stream them in pieces.
        """
        state = self._choices.setdefault(index, _ChoiceState())
        if state.finish_reason is not None:
            return None
        delta: dict[str, Any] = {}
        if not state.started:
            delta["role"] = "assistant"
            delta["content"] = content or ("" if not calls else None)
            state.started = True
        elif content:
            delta["content"] = content
        if reasoning:
            delta["reasoning_content"] = reasoning
        if calls:
            delta["tool_calls"] = [
                tool_call(cid, name, args, state.tool_calls + position) for position, (cid, name, args) in enumerate(calls)
            ]
            state.tool_calls += len(calls)
        elif arguments and state.tool_calls:
            delta["tool_calls"] = [{"index": state.tool_calls - 1, "function": {"arguments": arguments}}]
        if finish is not None:
            state.finish_reason = "tool_calls" if state.tool_calls else finish
        elif not delta and logprobs is None:
            return None
        entry = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": state.finish_reason}
        return self._chunk([entry])

    def usage_chunk(self, usage_data: dict[str, Any]) -> dict[str, Any]:
        return self._chunk([], usage=usage_data)

    def require_finished(self) -> None:
        """A stream that ends before every choice finished was cut, even if the connection closed cleanly."""
        if not self._choices or any(s.finish_reason is None for s in self._choices.values()):
            raise UpstreamProtocolError("upstream stream ended before its finish reason")

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
