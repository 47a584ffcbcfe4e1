"""A fake Gemini upstream (Generative Language API, v1beta REST).

Serves ``models/{m}:generateContent``, ``:streamGenerateContent`` (SSE with
``?alt=sse``, else a JSON array), ``:batchEmbedContents`` and ``GET models``
(paged). It checks requests the way the real API does where translation bugs
would hide: unknown fields, roles, empty parts, bad base64, unsigned
function calls for Gemini 3 models, a missing or invalid ``x-goog-api-key``;
errors come in Gemini's shape. Payloads validate against
``google.genai.types`` (tests/test_fakes_gemini_ollama.py).

Unscripted answers echo the last user turn (``echo: <text>``, non-text
parts as ``[mime]``); with tools offered and a user turn last, the model
calls the first allowed function. ``maxOutputTokens`` counts words and ends
with ``MAX_TOKENS``; ``stopSequences`` cut the text. Streamed tool calls end
like newer Gemini models do: the finish reason in an event of its own.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.fakes.server import FakeServer, Reply

INVALID_KEY = "invalid-key"

_PATH = re.compile(r"^/(?P<version>v1(?:beta|alpha)?)/(?P<model>(?:models|tunedModels)/[^:]+):(?P<method>\w+)$")
_LIST_PATH = re.compile(r"^/v1(?:beta|alpha)?/models$")

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

REQUEST_FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings", "cachedContent"}
GENERATION_FIELDS = {
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
}
PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode", "codeExecutionResult"}
PART_EXTRA = {"thought", "thoughtSignature"}
DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema"}

_ids = itertools.count(1)
THOUGHT_TOKENS = 5  # reported when the request sets a thinking budget


def error_body(code: int, message: str, status: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status or STATUS_NAMES.get(code, "UNKNOWN")}}


def usage_metadata(
    prompt: int, candidates: int | None = None, *, thoughts: int | None = None, cached: int | None = None
) -> dict[str, Any]:
    """``candidates`` is None for the early stream events, which carry only the prompt count."""
    data: dict[str, Any] = {"promptTokenCount": prompt}
    if candidates is not None:
        data["candidatesTokenCount"] = candidates
    data["totalTokenCount"] = prompt + (candidates or 0) + (thoughts or 0)
    data["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if thoughts is not None:
        data["thoughtsTokenCount"] = thoughts
    if cached is not None:
        data["cachedContentTokenCount"] = cached
    return data


def candidate(
    parts: list[dict[str, Any]], finish: str | None = "STOP", index: int = 0, **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish:
        data["finishReason"] = finish
    data["index"] = index
    data.update(extra)
    return data


def response(
    candidates: list[dict[str, Any]], usage: dict[str, Any] | None = None, model: str = "gemini-2.5-flash", **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {"candidates": candidates}
    if usage is not None:
        data["usageMetadata"] = usage
    data["modelVersion"] = model
    data["responseId"] = extra.pop("responseId", f"fakeResp{next(_ids)}")
    data.update(extra)
    return data


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(code: int, message: str) -> Response:
    return _json(error_body(code, message), code)


def _words(text: str) -> int:
    return len(text.split())


class FakeGemini(FakeServer):
    models = [
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.0-flash",
        "gemini-3-pro-preview",
        "text-embedding-004",
        "gemini-embedding-001",
    ]
    embedding_models = {"text-embedding-004", "gemini-embedding-001"}
    max_page_size = 1000

    def __init__(self) -> None:
        super().__init__()
        self.prompts: set[bytes] = set()  # every prompt seen, for implicit caching

    def stream_frame(self, item: Any) -> bytes:
        """Gemini ends each SSE event with CRLF pairs."""
        data = item if isinstance(item, bytes) else orjson.dumps(item)
        return b"data: " + data + b"\r\n\r\n"

    def reply_stream(self, events: list[dict[str, Any]], **kwargs: Any) -> Reply:
        return Reply(chunks=events, **kwargs)

    async def default_reply(self, request: Request, body: bytes) -> Response:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if key == INVALID_KEY:
            return _error(400, "API key not valid. Please pass a valid API key.")
        path = request.url.path
        if request.method == "GET" and _LIST_PATH.match(path):
            return self._list(request)
        match = _PATH.match(path)
        if request.method != "POST" or match is None:
            return _error(404, f"Method not found: {request.method} {path}")
        model, method = match["model"].removeprefix("models/"), match["method"]
        if model not in self.models:
            return _error(
                404,
                f"models/{model} is not found for API version {match['version']}, or is not supported for {method}. "
                "Call ListModels to see the list of available models and their supported methods.",
            )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "Invalid JSON payload received. Unexpected token.")
        if method == "batchEmbedContents":
            return self._embed(model, {"requests": [_keys(r) for r in payload.get("requests") or ()]})
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, f"Method not found: {method}")
        payload = normalize(payload)
        problem = request_problem(payload, model)
        if problem:
            return _error(400, problem)
        if method == "generateContent":
            return _json(self.answer(model, payload))
        return self._stream_answer(model, payload, sse=request.query_params.get("alt") == "sse")

    # -- generateContent --

    def reset(self) -> None:
        super().reset()
        self.prompts.clear()

    def answer(self, model: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The non-streamed ``GenerateContentResponse`` for a valid request."""
        config = payload.get("generationConfig") or {}
        call = _function_call(payload, model)
        prompt = _prompt_tokens(payload)
        cached = self._implicitly_cached(model, payload)
        thoughts = THOUGHT_TOKENS if (config.get("thinkingConfig") or {}).get("thinkingBudget") else None
        if call:
            return response([candidate([call])], usage_metadata(prompt, 3, thoughts=thoughts, cached=cached), model)
        text, finish = _reply_text(payload)
        count = config.get("candidateCount", 1)
        candidates = [candidate([{"text": text}], finish, index) for index in range(count)]
        usage = usage_metadata(prompt, _words(text) * count, thoughts=thoughts, cached=cached)
        if self.report_usage:  # Gemini reports cache reads, inside promptTokenCount, and no writes
            usage = usage_metadata(self.report_usage.prompt, self.report_usage.completion, cached=self.report_usage.cached)
        return response(candidates, usage, model)

    def _implicitly_cached(self, model: str, payload: dict[str, Any]) -> int | None:
        """Gemini's implicit caching: the longest earlier prompt (same model and system
        instruction) that this one starts with is read from cache; absent when none is."""
        contents = payload["contents"]
        system = payload.get("systemInstruction")
        self.prompts.add(orjson.dumps([model, system, contents]))
        for end in range(len(contents) - 1, 0, -1):
            if orjson.dumps([model, system, contents[:end]]) in self.prompts:
                return _prompt_tokens({"contents": contents[:end], "systemInstruction": system})
        return None

    def _stream_answer(self, model: str, payload: dict[str, Any], sse: bool) -> Response:
        events = stream_events(self.answer(model, payload))
        if sse:
            frames = [self.stream_frame(event) for event in events]
            return StreamingResponse(_iterate(frames), media_type="text/event-stream")
        body = b"[" + b",\r\n".join(orjson.dumps(e) for e in events) + b"]"
        return StreamingResponse(_iterate([body]), media_type="application/json")

    # -- batchEmbedContents --

    def _embed(self, model: str, payload: dict[str, Any]) -> Response:
        if model not in self.embedding_models:
            return _error(400, f"models/{model} does not support embedContent.")
        requests = payload.get("requests")
        if not isinstance(requests, list) or not requests:
            return _error(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
        embeddings = []
        for index, item in enumerate(requests):
            if item.get("model") != f"models/{model}":
                return _error(400, f"* BatchEmbedContentsRequest.requests[{index}].model: model must match the request's model")
            parts = (item.get("content") or {}).get("parts") or []
            text = "".join(p.get("text", "") for p in parts)
            size = item.get("outputDimensionality") or 3
            embeddings.append({"values": ([float(len(text) % 7), 0.5, -0.25] + [0.0] * size)[:size]})
        return _json({"embeddings": embeddings})

    # -- GET models --

    def _list(self, request: Request) -> Response:
        size = min(int(request.query_params.get("pageSize") or 50), self.max_page_size)
        start = int(request.query_params.get("pageToken") or 0)
        names = self.models[start : start + size]
        data: dict[str, Any] = {"models": [_model_info(name, name in self.embedding_models) for name in names]}
        if start + size < len(self.models):
            data["nextPageToken"] = str(start + size)
        return _json(data)


def stream_events(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """How Gemini streams ``answer``: a word per event, usage growing, the finish in the last.

    A function call comes whole in one event and the finish reason follows
    in an event of its own, as newer models send it.
    """
    usage = answer.get("usageMetadata") or {}
    prompt_only = usage_metadata(usage.get("promptTokenCount", 0))
    base = {"modelVersion": answer.get("modelVersion"), "responseId": answer.get("responseId")}
    candidates = answer.get("candidates") or []
    parts = candidates[0]["content"]["parts"] if candidates else []
    if any("functionCall" in p for p in parts):
        return [
            {"candidates": [candidate(parts, None)], "usageMetadata": prompt_only, **base},
            {"candidates": [candidate([{"text": ""}], "STOP")], "usageMetadata": usage, **base},
        ]
    pieces = [_split_words(c["content"]["parts"][0].get("text", "")) for c in candidates]
    events = []
    for step in range(max(len(p) for p in pieces)):
        last = step == max(len(p) for p in pieces) - 1
        step_candidates = [
            candidate([{"text": p[step] if step < len(p) else ""}], c.get("finishReason") if last else None, c.get("index", 0))
            for p, c in zip(pieces, candidates)
        ]
        events.append({"candidates": step_candidates, "usageMetadata": usage if last else prompt_only, **base})
    return events


def _split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] or [""]


async def _iterate(frames: list[bytes]):  # type: ignore[no-untyped-def]
    for frame in frames:
        yield frame


def _model_info(name: str, embedding: bool) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "description": f"Fake {name}",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["embedContent", "batchEmbedContents"]
        if embedding
        else ["generateContent", "countTokens"],
    }


# -- request checks, as the real API answers them ---------------------------------------------


def normalize(payload: Any) -> Any:
    """Structural field names in camelCase, as the API's proto JSON parser reads both spellings.

    Only the protocol's own fields are renamed: function arguments, tool
    results and JSON schemas are user data and stay as sent.
    """
    if not isinstance(payload, dict):
        return payload
    data = _keys(payload)
    if isinstance(data.get("contents"), list):
        data["contents"] = [_content(c) for c in data["contents"]]
    if isinstance(data.get("systemInstruction"), dict):
        data["systemInstruction"] = _content(data["systemInstruction"])
    if isinstance(data.get("generationConfig"), dict):
        config = data["generationConfig"] = _keys(data["generationConfig"])
        if "thinkingConfig" in config:
            config["thinkingConfig"] = _keys(config["thinkingConfig"])
    if isinstance(data.get("tools"), list):
        data["tools"] = [_tool(tool) for tool in data["tools"]]
    if isinstance(data.get("toolConfig"), dict):
        tool_config = data["toolConfig"] = _keys(data["toolConfig"])
        if "functionCallingConfig" in tool_config:
            tool_config["functionCallingConfig"] = _keys(tool_config["functionCallingConfig"])
    return data


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _keys(data: Any) -> Any:
    return {_camel(k): v for k, v in data.items()} if isinstance(data, dict) else data


def _content(content: Any) -> Any:
    content = _keys(content)
    if isinstance(content, dict) and isinstance(content.get("parts"), list):
        content["parts"] = [_part(p) for p in content["parts"]]
    return content


def _part(part: Any) -> Any:
    part = _keys(part)
    if isinstance(part, dict):
        for name in ("inlineData", "fileData", "functionCall", "functionResponse"):
            if name in part:
                part[name] = _keys(part[name])
    return part


def _tool(tool: Any) -> Any:
    tool = _keys(tool)
    if isinstance(tool, dict) and isinstance(tool.get("functionDeclarations"), list):
        tool["functionDeclarations"] = [_keys(d) for d in tool["functionDeclarations"]]
    return tool



def request_problem(payload: Any, model: str) -> str | None:
    """The 400 message the real API would give, or None for a request it accepts."""
    if not isinstance(payload, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in payload:
        if name not in REQUEST_FIELDS:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    contents = payload.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return "Please use a valid role: user, model."
        problem = _parts_problem(content.get("parts"), f"contents[{index}]")
        if problem:
            return problem
    system = payload.get("systemInstruction")
    if system is not None:
        problem = _parts_problem(system.get("parts"), "system_instruction")
        if problem:
            return problem
    return (
        _config_problem(payload.get("generationConfig") or {})
        or _tools_problem(payload)
        or (_signature_problem(contents) if model.startswith("gemini-3") else None)
    )


def _parts_problem(parts: Any, where: str) -> str | None:
    if not isinstance(parts, list) or not parts:
        return f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
    for index, part in enumerate(parts):
        at = f"{where}.parts[{index}]"
        unknown = set(part) - PART_DATA - PART_EXTRA
        if unknown:
            return f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at '{at}': Cannot find field."
        if len(set(part) & PART_DATA) != 1:
            return f"* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field"
        if "text" in part and part["text"] == "":
            return f"* GenerateContentRequest.{at}.data: empty text parameter"
        if "inlineData" in part:
            try:
                base64.b64decode(part["inlineData"].get("data", ""), validate=True)
            except (binascii.Error, ValueError):
                return f"Invalid value at '{at}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
        if "functionCall" in part and not isinstance(part["functionCall"].get("args", {}), dict):
            return f"Invalid value at '{at}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"
        if "functionResponse" in part and not isinstance(part["functionResponse"].get("response"), dict):
            return f"Invalid value at '{at}.function_response.response' (type.googleapis.com/google.protobuf.Struct)"
    return None


def _config_problem(config: dict[str, Any]) -> str | None:
    for name in config:
        if name not in GENERATION_FIELDS:
            return f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': Cannot find field."
    if "responseSchema" in config and "responseJsonSchema" in config:
        return "responseSchema and responseJsonSchema cannot both be set."
    return None


def _tools_problem(payload: dict[str, Any]) -> str | None:
    for tool_index, tool in enumerate(payload.get("tools") or ()):
        for index, declaration in enumerate(tool.get("functionDeclarations") or ()):
            at = f"tools[{tool_index}].function_declarations[{index}]"
            unknown = set(declaration) - DECLARATION_FIELDS
            if unknown:
                return f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at '{at}': Cannot find field."
            if not declaration.get("name"):
                return f"* GenerateContentRequest.{at}.name: [FIELD_INVALID] Invalid function name."
    mode = ((payload.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode", "AUTO")
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        return f"Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
    return None


def _signature_problem(contents: list[dict[str, Any]]) -> str | None:
    """Gemini 3 wants the first function call of each model turn signed."""
    for index, content in enumerate(contents):
        calls = [p for p in content["parts"] if "functionCall" in p]
        if content["role"] == "model" and calls and not calls[0].get("thoughtSignature"):
            return (
                f"Function call is missing a thought_signature in functionCall parts. This is required for tools to "
                f"work correctly, and missing thought_signature may lead to degraded model performance. "
                f"Position: contents[{index}]"
            )
    return None


# -- what the fake model says -----------------------------------------------------------------


def _function_call(payload: dict[str, Any], model: str) -> dict[str, Any] | None:
    """A call of the first allowed function when tools are offered and the user spoke last."""
    declarations = [d for tool in payload.get("tools") or () for d in tool.get("functionDeclarations") or ()]
    config = (payload.get("toolConfig") or {}).get("functionCallingConfig") or {}
    last = payload["contents"][-1]
    if not declarations or config.get("mode") == "NONE" or last["role"] != "user":
        return None
    if any("functionResponse" in p for p in last["parts"]):
        return None
    allowed = config.get("allowedFunctionNames") or [d["name"] for d in declarations]
    part: dict[str, Any] = {"functionCall": {"name": allowed[0], "args": {"city": "Paris"}}}
    if model.startswith("gemini-3"):
        part["thoughtSignature"] = base64.b64encode(f"sig-{next(_ids)}".encode()).decode()
    return part


def last_user_text(contents: list[dict[str, Any]]) -> str:
    """The last user turn as text; media parts as ``[mime]``, tool results as their JSON."""
    for content in reversed(contents):
        if content["role"] != "user":
            continue
        pieces = []
        for part in content["parts"]:
            if "text" in part:
                pieces.append(part["text"])
            elif "inlineData" in part:
                pieces.append(f"[{part['inlineData'].get('mimeType')}]")
            elif "fileData" in part:
                pieces.append(f"[{part['fileData'].get('mimeType')} {part['fileData'].get('fileUri')}]")
            elif "functionResponse" in part:
                pieces.append(orjson.dumps(part["functionResponse"]["response"]).decode())
        return " ".join(pieces)
    return ""


def _reply_text(payload: dict[str, Any]) -> tuple[str, str]:
    config = payload.get("generationConfig") or {}
    text = f"echo: {last_user_text(payload['contents'])}"
    if config.get("responseMimeType") == "application/json":
        text = orjson.dumps({"echo": last_user_text(payload["contents"])}).decode()
    for stop in config.get("stopSequences") or ():
        if stop in text:
            text = text[: text.index(stop)]
    limit = config.get("maxOutputTokens")
    if limit is not None and _words(text) > limit:
        return " ".join(text.split(" ")[:limit]), "MAX_TOKENS"
    return text, "STOP"


def _prompt_tokens(payload: dict[str, Any]) -> int:
    parts = [p for c in payload["contents"] for p in c["parts"]]
    parts += (payload.get("systemInstruction") or {}).get("parts") or []
    return max(1, sum(_words(p.get("text", "")) + (0 if "text" in p else 1) for p in parts))
