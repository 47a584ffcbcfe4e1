"""Ollama's native API (``/api/chat``, ``/api/embed``, ``/api/tags``) behind OpenAI's chat format.

The pure functions translate both ways: ``chat_request`` (OpenAI body →
``/api/chat`` body), ``chat_response`` (one Ollama answer → ``chat.completion``)
and ``OllamaStream`` (NDJSON lines → chunks); the provider class only sends
and receives. Answers carry the ``model`` the client asked for.

Ollama streams NDJSON and can fail after answering 200: an ``{"error": ...}``
line mid-stream becomes ``UpstreamProtocolError``, which the pipeline sends
as the stream's last SSE event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.completions import Completion
from proxy.config import ProviderConfig
from proxy.errors import InvalidRequest, UpstreamProtocolError
from proxy.http import UpstreamClient
from proxy.providers import translate as t
from proxy.providers.base import Call, ChunkStream, Provider, from_client, from_upstream, parse_json, translated_stream

PROVIDER = "Ollama"

# ``keep_alive`` and ``options`` are Ollama's own and pass through (via the SDK's ``extra_body``).
CHAT_PARAMETERS = t.CARRIED | {"presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "keep_alive", "options"}
EMBEDDING_PARAMETERS = frozenset({"encoding_format", "dimensions", "keep_alive"})

# OpenAI parameter → Ollama ``options`` key.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

# As Ollama's own OpenAI-compatible endpoint maps ``reasoning_effort`` to ``think``.
THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}


# -- OpenAI request → Ollama request ----------------------------------------------------------


def chat_request(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI chat request; raises ``InvalidRequest``.

    ``stream`` is always explicit: Ollama streams when it is left out.
    """
    t.check_parameters(body, CHAT_PARAMETERS, PROVIDER)
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("'messages' must be a list of message objects.", param="messages")
    wire: dict[str, Any] = {"model": model, "messages": _messages(messages), "stream": stream}
    tools = _tools(body)
    if tools:
        wire["tools"] = tools
    kind, schema = t.response_format(body)
    if kind == "json":
        wire["format"] = schema if schema is not None else "json"
    options = _options(body)
    if options:
        wire["options"] = options
    if body.get("keep_alive") is not None:
        wire["keep_alive"] = body["keep_alive"]
    if body.get("reasoning_effort") is not None:
        wire["think"] = _think(body["reasoning_effort"])
    if body.get("logprobs"):
        wire["logprobs"] = True
        if body.get("top_logprobs"):
            wire["top_logprobs"] = body["top_logprobs"]
    return wire


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = t.tool_call_names(messages)
    return [_message(msg, names, f"messages[{index}]") for index, msg in enumerate(messages)]


def _message(msg: dict[str, Any], names: dict[str, str], param: str) -> dict[str, Any]:
    role = msg.get("role")
    content = msg.get("content")
    if role == "user":
        return _user_message(content, f"{param}.content")
    if role not in ("system", "developer", "assistant", "tool"):
        raise t.unsupported(f"The message role {role!r}", PROVIDER, f"{param}.role")
    text = "\n".join(t.text_parts(content, f"{param}.content", PROVIDER))
    wire: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
    if role == "assistant" and msg.get("tool_calls"):
        wire["tool_calls"] = [_wire_call(call, f"{param}.tool_calls[{i}]") for i, call in enumerate(msg["tool_calls"])]
    if role == "tool" and names.get(str(msg.get("tool_call_id"))):
        wire["tool_name"] = names[str(msg.get("tool_call_id"))]
    return wire


def _user_message(content: Any, param: str) -> dict[str, Any]:
    """Text parts joined by newlines; images as the bare base64 Ollama wants."""
    if not isinstance(content, list):
        return {"role": "user", "content": "\n".join(t.text_parts(content, param, PROVIDER))}
    texts, images = [], []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            images.append(_image(part.get("image_url"), f"{param}[{index}]"))
        elif kind == "text":
            texts.append(str(part.get("text") or ""))
        else:
            raise t.unsupported(f"A content part of type {kind!r}", PROVIDER, f"{param}[{index}]")
    wire: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
    if images:
        wire["images"] = images
    return wire


def _image(image: Any, param: str) -> str:
    """Only data URLs: Ollama cannot fetch a URL, and Sluice will not fetch one on a client's behalf."""
    url = image.get("url") if isinstance(image, dict) else image
    data = t.parse_data_url(str(url or ""), param)
    if data is None:
        raise t.unsupported("An image given by http URL (send a data URL)", PROVIDER, param)
    return data.data


def _wire_call(call: dict[str, Any], param: str) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = t.call_arguments(function.get("arguments"), f"{param}.function.arguments")
    return {"function": {"name": function.get("name"), "arguments": arguments}}


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Ollama lets the model choose freely: it cannot be forced to call a tool, only offered none."""
    choice = t.tool_choice(body)
    if choice.mode == "required":
        raise t.unsupported("Forcing a tool call (tool_choice 'required' or a named function)", PROVIDER, "tool_choice")
    if choice.mode == "none":
        return []
    return [{"type": "function", "function": _function(f)} for f in t.function_tools(body, choice, PROVIDER)]


def _function(function: dict[str, Any]) -> dict[str, Any]:
    wire = {"name": function.get("name"), "parameters": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        wire["description"] = function["description"]
    return wire


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's own ``options`` first, so the OpenAI parameters the client also set win."""
    native = body.get("options") or {}
    if not isinstance(native, dict):
        raise InvalidRequest("'options' must be an object of Ollama model options.", param="options")
    return {**native, **t.sampling(body, OPTIONS, "num_predict", "stop")}


def _think(effort: Any) -> bool | str:
    if effort not in THINK:
        raise InvalidRequest(f"Invalid reasoning_effort: {effort!r}.", param="reasoning_effort")
    return THINK[effort]


# -- Ollama answer → OpenAI answer ------------------------------------------------------------


def finish_reason(done_reason: str | None, has_tool_calls: bool) -> str:
    """Ollama says ``stop`` after tool calls too; ``load``/``unload`` answers stop as well."""
    if has_tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage(data: dict[str, Any]) -> dict[str, Any] | None:
    """``prompt_eval_count`` is absent when the whole prompt came from Ollama's cache."""
    if "prompt_eval_count" not in data and "eval_count" not in data:
        return None
    return t.usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0))


def _calls(msg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(id, name, arguments JSON); Ollama sends arguments as objects and, mostly, no ids."""
    calls = []
    for call in msg.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        text = arguments if isinstance(arguments, str) else t.arguments_text(arguments)
        calls.append((call.get("id") or t.tool_call_id(), str(function.get("name", "")), text))
    return calls


def _logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if not entries:
        return None
    content = [
        t.token_logprob(
            e.get("token", ""),
            e.get("logprob", 0.0),
            [(top.get("token", ""), top.get("logprob", 0.0)) for top in e.get("top_logprobs") or ()],
        )
        for e in entries
    ]
    return {"content": content, "refusal": None}


def chat_response(data: dict[str, Any], model: str) -> dict[str, Any]:
    """One non-streamed ``/api/chat`` answer as a ``chat.completion`` answering for ``model``."""
    msg = data.get("message") or {}
    calls = [t.tool_call(cid, name, args) for cid, name, args in _calls(msg)]
    reason = finish_reason(data.get("done_reason"), bool(calls))
    choice = t.choice(0, t.message(msg.get("content"), calls), reason, _logprobs(data.get("logprobs")))
    return t.completion(t.completion_id(), model, [choice], usage(data))


@dataclass(slots=True)
class OllamaStream:
    """NDJSON lines in, ``chat.completion.chunk`` dicts out; usage comes with the ``done`` line."""

    model: str
    _builder: t.ChunkBuilder = field(init=False)
    _usage: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._builder = t.ChunkBuilder(self.model)

    def feed(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in line:
            raise UpstreamProtocolError(f"upstream stream failed: {line['error'] or 'unknown error'}")
        msg = line.get("message") or {}
        finish = finish_reason(line.get("done_reason"), False) if line.get("done") else None
        chunk = self._builder.delta(
            0, content=msg.get("content"), calls=_calls(msg), finish=finish, logprobs=_logprobs(line.get("logprobs"))
        )
        if line.get("done"):
            self._usage = usage(line)
        return [chunk] if chunk is not None else []

    def close(self) -> list[dict[str, Any]]:
        """The last chunks once the upstream closed; raises if it never sent ``done``."""
        self._builder.require_finished()
        return [self._builder.usage_chunk(self._usage)] if self._usage else []


# -- embeddings and models --------------------------------------------------------------------


def embed_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    t.check_parameters(body, EMBEDDING_PARAMETERS, PROVIDER)
    t.encoding_format(body)
    wire: dict[str, Any] = {"model": model, "input": t.embedding_inputs(body)}
    for name in ("dimensions", "keep_alive"):
        if body.get(name) is not None:
            wire[name] = body[name]
    return wire


def embed_response(data: dict[str, Any], body: dict[str, Any], model: str) -> dict[str, Any]:
    vectors = list(data.get("embeddings") or ())
    return t.embeddings_list(vectors, model, data.get("prompt_eval_count", 0), t.encoding_format(body))


def model_ids(data: dict[str, Any]) -> list[str]:
    return [m["name"] for m in data.get("models") or () if isinstance(m, dict) and isinstance(m.get("name"), str)]


# -- the provider -----------------------------------------------------------------------------


class OllamaProvider(Provider):
    """Speaks Ollama's native API; an ``api_key`` (e.g. for ollama.com) is sent as a bearer token."""

    def __init__(self, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(config, client)
        self._chat_url = f"{config.base_url}/api/chat"
        self._embed_url = f"{config.base_url}/api/embed"
        self._tags_url = f"{config.base_url}/api/tags"

    async def chat(self, call: Call) -> Completion:
        wire = from_client(chat_request, call.body, call.model, False)
        response = await self._send("POST", self._chat_url, call.authorization, wire)
        data = parse_json(await response.read())
        if "error" in data:
            raise UpstreamProtocolError(f"upstream failed: {data['error']}")
        return Completion.from_data(from_upstream(chat_response, data, call.client_model))

    async def chat_stream(self, call: Call) -> ChunkStream:
        wire = from_client(chat_request, call.body, call.model, True)
        response = await self._send("POST", self._chat_url, call.authorization, wire)
        return ChunkStream(response, translated_stream(response.line_batches(), OllamaStream(call.client_model)))

    async def embed(self, call: Call) -> Completion:
        wire = from_client(embed_request, call.body, call.model)
        response = await self._send("POST", self._embed_url, call.authorization, wire)
        data = parse_json(await response.read())
        return Completion.from_data(from_upstream(embed_response, data, call.body, call.client_model))

    async def list_models(self, authorization: str | None) -> list[str]:
        response = await self._send("GET", self._tags_url, authorization)
        return from_upstream(model_ids, parse_json(await response.read()))


