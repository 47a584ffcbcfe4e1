"""Gemini (Generative Language API, v1beta REST) behind OpenAI's chat format.

The pure functions translate both ways: ``chat_request`` (OpenAI body →
``generateContent`` body), ``chat_response`` (``GenerateContentResponse`` →
``chat.completion``) and ``GeminiStream`` (stream events → chunks); the
provider class only sends and receives. Answers carry the ``model`` the
client asked for, so an OpenAI SDK sees its own model name back.

Gemini 3 models sign their function calls (``thoughtSignature``) and reject
a later turn that does not return the signature. OpenAI clients echo tool
call ids verbatim, so the signature travels inside the id
(``call_…__thought__<signature>``); a call without one (from another
provider, or an edited history) gets Google's documented bypass value.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from proxy.completions import Chunk, Completion
from proxy.config import ProviderConfig
from proxy.errors import InvalidRequest, UpstreamProtocolError
from proxy.http import UpstreamClient, UpstreamResponse
from proxy.providers import translate as t
from proxy.providers.base import (
    Call,
    ChunkStream,
    Provider,
    from_client,
    from_upstream,
    path_model,
    translated,
)
from proxy.sse import Comment

PROVIDER = "Gemini"

CHAT_PARAMETERS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
    }
)
EMBEDDING_PARAMETERS = frozenset({"encoding_format", "dimensions"})

SIGNATURE_SEPARATOR = "__thought__"
# Google's documented value for a function call whose real signature is unknown.
BYPASS_SIGNATURE = "skip_thought_signature_validator"

# Google's own OpenAI-compatibility mapping of reasoning_effort to a thinking budget.
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}

_CONTENT_FILTER = "content_filter"
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": _CONTENT_FILTER,
    "RECITATION": _CONTENT_FILTER,
    "LANGUAGE": _CONTENT_FILTER,
    "BLOCKLIST": _CONTENT_FILTER,
    "PROHIBITED_CONTENT": _CONTENT_FILTER,
    "SPII": _CONTENT_FILTER,
    "IMAGE_SAFETY": _CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": _CONTENT_FILTER,
    "IMAGE_RECITATION": _CONTENT_FILTER,
}

AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}


# -- OpenAI request → Gemini request ----------------------------------------------------------


def chat_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat request; raises ``InvalidRequest``."""
    t.check_parameters(body, CHAT_PARAMETERS, PROVIDER)
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("'messages' must be a list of message objects.", param="messages")
    system, contents = _contents(messages, sign_calls=_signs_calls(model))
    wire: dict[str, Any] = {"contents": contents}
    if system:
        wire["systemInstruction"] = {"parts": system}
    config = _generation_config(body)
    if config:
        wire["generationConfig"] = config
    choice = t.tool_choice(body)
    functions = t.function_tools(body, choice, PROVIDER)
    if functions:
        wire["tools"] = [{"functionDeclarations": [_declaration(f) for f in functions]}]
        if choice.given:
            wire["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    return wire


def _signs_calls(model: str) -> bool:
    """Gemini 3 rejects unsigned function calls in the history; older models ignore signatures."""
    return model.removeprefix("models/").startswith("gemini-3")


def _contents(messages: list[dict[str, Any]], sign_calls: bool) -> tuple[list[dict], list[dict]]:
    """System parts, and the turns with consecutive same-role messages merged.

    Merging keeps the results of parallel tool calls in one turn, as Gemini expects.
    """
    names = t.tool_call_names(messages)
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for index, msg in enumerate(messages):
        param = f"messages[{index}]"
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend({"text": text} for text in t.text_parts(msg.get("content"), f"{param}.content", PROVIDER) if text)
            continue
        if role == "user":
            wire_role, parts = "user", _user_parts(msg.get("content"), f"{param}.content")
        elif role == "assistant":
            wire_role, parts = "model", _assistant_parts(msg, param, sign_calls)
        elif role == "tool":
            wire_role, parts = "user", [_function_response(msg, names, param)]
        else:
            raise t.unsupported(f"The message role {role!r}", PROVIDER, f"{param}.role")
        t.add_turn(contents, wire_role, "parts", parts)
    return system, contents


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("Message content must be a string or a list of content parts.", param=param)
    parts = [_user_part(part, f"{param}[{index}]") for index, part in enumerate(content)]
    return [part for part in parts if part.get("text") != ""]


def _user_part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"text": str(part.get("text") or "")}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return _media_part(str(url or ""), param, default_mime="image/jpeg")
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        mime = AUDIO_FORMATS.get(audio.get("format"), f"audio/{audio.get('format')}")
        return {"inlineData": {"mimeType": mime, "data": audio.get("data") or ""}}
    if kind == "file":
        return _file_part(part.get("file") or {}, param)
    raise t.unsupported(f"A content part of type {kind!r}", PROVIDER, param)


def _media_part(url: str, param: str, default_mime: str) -> dict[str, Any]:
    """Data URLs travel inline; http URLs are fetched by Gemini itself (``fileData``)."""
    data = t.parse_data_url(url, param)
    if data is not None:
        return {"inlineData": {"mimeType": data.mime, "data": data.data}}
    if not url.startswith(("http://", "https://", "gs://")):
        raise InvalidRequest("An image URL must be an http(s) URL or a data URL.", param=param)
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _file_part(file: dict[str, Any], param: str) -> dict[str, Any]:
    if file.get("file_id") and not file.get("file_data"):
        raise t.unsupported("An OpenAI file_id", PROVIDER, param)
    payload = str(file.get("file_data") or "")
    data = t.parse_data_url(payload, param)
    if data is not None:
        return {"inlineData": {"mimeType": data.mime, "data": data.data}}
    mime = mimetypes.guess_type(str(file.get("filename") or ""))[0] or "application/pdf"
    return {"inlineData": {"mimeType": mime, "data": payload}}


def _assistant_parts(msg: dict[str, Any], param: str, sign_calls: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"text": text} for text in t.text_parts(msg.get("content"), f"{param}.content", PROVIDER) if text
    ]
    for position, call in enumerate(msg.get("tool_calls") or ()):
        function = call.get("function") or {}
        args_param = f"{param}.tool_calls[{position}].function.arguments"
        part: dict[str, Any] = {
            "functionCall": {"name": function.get("name"), "args": t.call_arguments(function.get("arguments"), args_param)}
        }
        _, _, signature = str(call.get("id") or "").partition(SIGNATURE_SEPARATOR)
        if signature:
            part["thoughtSignature"] = signature
        elif sign_calls and position == 0:
            part["thoughtSignature"] = BYPASS_SIGNATURE
        parts.append(part)
    return parts


def _function_response(msg: dict[str, Any], names: dict[str, str], param: str) -> dict[str, Any]:
    """A tool result; Gemini wants an object, so anything else is wrapped as ``{"output": ...}``."""
    name = names.get(str(msg.get("tool_call_id"))) or msg.get("name")
    if not name:
        raise InvalidRequest(
            "A tool message must answer a tool call made earlier in the conversation.", param=f"{param}.tool_call_id"
        )
    text = "".join(t.text_parts(msg.get("content"), f"{param}.content", PROVIDER))
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": name, "response": response}}


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    simple = {
        "temperature": "temperature",
        "top_p": "topP",
        "top_k": "topK",
        "n": "candidateCount",
        "seed": "seed",
        "presence_penalty": "presencePenalty",
        "frequency_penalty": "frequencyPenalty",
        "top_logprobs": "logprobs",
    }
    for name, wire_name in simple.items():
        if body.get(name) is not None:
            config[wire_name] = body[name]
    if t.max_tokens(body) is not None:
        config["maxOutputTokens"] = t.max_tokens(body)
    if t.stop_sequences(body):
        config["stopSequences"] = t.stop_sequences(body)
    if body.get("logprobs"):
        config["responseLogprobs"] = True
    kind, schema = t.response_format(body)
    if kind == "json":
        config["responseMimeType"] = "application/json"
        if schema is not None:
            config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise InvalidRequest(f"Invalid reasoning_effort: {effort!r}.", param="reasoning_effort")
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    """``parametersJsonSchema`` takes the JSON Schema as is, unlike ``parameters``' OpenAPI subset."""
    declaration: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _calling_config(choice: t.ToolChoice) -> dict[str, Any]:
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]
    config: dict[str, Any] = {"mode": mode}
    if mode == "ANY" and choice.names:
        config["allowedFunctionNames"] = list(choice.names)
    return config


# -- Gemini answer → OpenAI answer ------------------------------------------------------------


def finish_reason(reason: str | None, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason or "STOP", "stop")


def usage(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI counts reasoning inside completion tokens and tool-use prompts inside prompt tokens."""
    if not metadata:
        return None
    prompt = metadata.get("promptTokenCount", 0) + metadata.get("toolUsePromptTokenCount", 0)
    completion = metadata.get("candidatesTokenCount", 0) + metadata.get("thoughtsTokenCount", 0)
    return t.usage(
        prompt,
        completion,
        metadata.get("totalTokenCount") or prompt + completion,
        cached=metadata.get("cachedContentTokenCount"),
        reasoning=metadata.get("thoughtsTokenCount"),
    )


@dataclass(slots=True)
class _Said:
    """What one candidate (or one event of it) says, in OpenAI's terms."""

    text: str | None
    calls: list[tuple[str, str, str]]  # (id, name, arguments JSON)
    logprobs: dict[str, Any] | None


def _said(candidate: dict[str, Any]) -> _Said:
    parts = (candidate.get("content") or {}).get("parts") or ()
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    calls = [_call(p) for p in parts if isinstance(p.get("functionCall"), dict)]
    return _Said("".join(texts) if texts else None, calls, _logprobs(candidate.get("logprobsResult")))


def _call(part: dict[str, Any]) -> tuple[str, str, str]:
    function = part["functionCall"]
    call_id = function.get("id") or t.tool_call_id()
    if part.get("thoughtSignature"):
        call_id = f"{call_id}{SIGNATURE_SEPARATOR}{part['thoughtSignature']}"
    return call_id, str(function.get("name", "")), t.arguments_text(function.get("args"))


def _logprobs(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if not result or not result.get("chosenCandidates"):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for position, chosen in enumerate(result["chosenCandidates"]):
        top = tops[position].get("candidates", []) if position < len(tops) else []
        content.append(
            t.token_logprob(
                chosen.get("token", ""),
                chosen.get("logProbability", 0.0),
                [(c.get("token", ""), c.get("logProbability", 0.0)) for c in top],
            )
        )
    return {"content": content, "refusal": None}


def _blocked(data: dict[str, Any]) -> bool:
    """A prompt Gemini refused outright: no candidates, only ``promptFeedback.blockReason``."""
    return not data.get("candidates") and bool((data.get("promptFeedback") or {}).get("blockReason"))


def chat_response(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``GenerateContentResponse`` as a ``chat.completion`` answering for ``model``."""
    choices = []
    for candidate in sorted(data.get("candidates") or (), key=lambda c: c.get("index", 0)):
        said = _said(candidate)
        calls = [t.tool_call(cid, name, args) for cid, name, args in said.calls]
        reason = finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(t.choice(candidate.get("index", 0), t.message(said.text, calls), reason, said.logprobs))
    if _blocked(data):
        choices = [t.choice(0, t.message(None, []), _CONTENT_FILTER)]
    return t.completion(t.completion_id(data.get("responseId")), model, choices, usage(data.get("usageMetadata")))


@dataclass(slots=True)
class GeminiStream:
    """Gemini stream events in, ``chat.completion.chunk`` dicts out.

    Gemini repeats ``usageMetadata`` in every event; only the last one counts,
    and it becomes the usage-only chunk that ends the stream.
    """

    model: str
    _builder: t.ChunkBuilder | None = None
    _usage: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamProtocolError(f"upstream stream failed: {message or 'unknown error'}")
        builder = self._builder = self._builder or t.ChunkBuilder(self.model, t.completion_id(event.get("responseId")))
        chunks = []
        for candidate in event.get("candidates") or ():
            said = _said(candidate)
            reason = candidate.get("finishReason")
            chunks.append(
                builder.delta(
                    candidate.get("index", 0),
                    content=said.text,
                    calls=said.calls,
                    finish=finish_reason(reason, False) if reason else None,
                    logprobs=said.logprobs,
                )
            )
        if _blocked(event):
            chunks.append(builder.delta(0, finish=_CONTENT_FILTER))
        self._usage = usage(event.get("usageMetadata")) or self._usage
        return [chunk for chunk in chunks if chunk is not None]

    def close(self) -> list[dict[str, Any]]:
        """The last chunks once the upstream closed; raises if it stopped before finishing."""
        if self._builder is None:
            raise UpstreamProtocolError("upstream stream ended before its first event")
        self._builder.require_finished()
        return [self._builder.usage_chunk(self._usage)] if self._usage else []


# -- embeddings and models --------------------------------------------------------------------


def model_path(model: str) -> str:
    """``models/{m}`` (or a ``tunedModels/…`` name as given), quoted for the URL path."""
    path_model(model)
    path = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    return quote(path, safe="/")


def embed_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    t.check_parameters(body, EMBEDDING_PARAMETERS, PROVIDER)
    t.encoding_format(body)
    name = model_path(model)
    requests = []
    for text in t.embedding_inputs(body):
        request: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if body.get("dimensions") is not None:
            request["outputDimensionality"] = body["dimensions"]
        requests.append(request)
    return {"requests": requests}


def embed_response(data: dict[str, Any], body: dict[str, Any], model: str) -> dict[str, Any]:
    """Gemini reports no token counts for embeddings, so ``usage`` is zero unless it does."""
    vectors = [e.get("values") or [] for e in data.get("embeddings") or ()]
    tokens = (data.get("usageMetadata") or {}).get("promptTokenCount", 0)
    return t.embeddings_list(vectors, model, tokens, t.encoding_format(body))


def model_ids(data: dict[str, Any]) -> list[str]:
    return [
        m["name"].removeprefix("models/")
        for m in data.get("models") or ()
        if isinstance(m, dict) and isinstance(m.get("name"), str)
    ]


# -- the provider -----------------------------------------------------------------------------


class GeminiProvider(Provider):
    """Speaks Gemini's REST API; the key goes in ``x-goog-api-key``, never in a URL."""

    def __init__(self, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(config, client)
        self._base_url = config.base_url

    def _headers(self, authorization: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self.credential(authorization)
        if key:
            headers["x-goog-api-key"] = key
        return headers

    def _url(self, model: str, method: str) -> str:
        return f"{self._base_url}/{model_path(model)}:{method}"

    async def chat(self, call: Call) -> Completion:
        wire = from_client(chat_request, call.body, call.model)
        response = await self._send("POST", self._url(call.model, "generateContent"), call.authorization, wire)
        data = t.parse_json(await response.read())
        return Completion.from_data(from_upstream(chat_response, data, _client_model(call)))

    async def chat_stream(self, call: Call) -> ChunkStream:
        wire = from_client(chat_request, call.body, call.model)
        url = self._url(call.model, "streamGenerateContent") + "?alt=sse"
        response = await self._send("POST", url, call.authorization, wire)
        return ChunkStream(response, _chunks(response, GeminiStream(_client_model(call))))

    async def embed(self, call: Call) -> Completion:
        wire = from_client(embed_request, call.body, call.model)
        response = await self._send("POST", self._url(call.model, "batchEmbedContents"), call.authorization, wire)
        data = t.parse_json(await response.read())
        return Completion.from_data(from_upstream(embed_response, data, call.body, _client_model(call)))

    async def list_models(self, authorization: str | None) -> list[str]:
        """Every page of ``GET models``: the API caps a page at 1000 models."""
        ids: list[str] = []
        token = ""
        while True:
            url = f"{self._base_url}/models?pageSize=1000" + (f"&pageToken={quote(token)}" if token else "")
            data = t.parse_json(await (await self._send("GET", url, authorization)).read())
            ids.extend(from_upstream(model_ids, data))
            token = data.get("nextPageToken") or ""
            if not isinstance(token, str):
                raise UpstreamProtocolError("upstream sent a nextPageToken that is not a string")
            if not token:
                return ids


def _client_model(call: Call) -> str:
    return str(call.body.get("model") or call.model)


async def _chunks(response: UpstreamResponse, stream: GeminiStream) -> AsyncIterator[list[Chunk] | Comment]:
    def feed(data: bytes) -> list[Chunk]:
        return [Chunk.from_data(chunk) for chunk in stream.feed(t.parse_json(data))]

    async for chunks in translated(response.sse_batches(), feed):
        yield chunks
    last = [Chunk.from_data(chunk) for chunk in from_upstream(stream.close)]
    if last:
        yield last
