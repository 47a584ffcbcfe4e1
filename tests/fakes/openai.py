"""A fake OpenAI upstream: /v1/chat/completions (JSON and SSE), /v1/embeddings, /v1/models,
/v1/responses (with its {id} routes; tests/fakes/openai_responses.py) and legacy /v1/completions.

Unscripted answers echo the last user message, so tests can tell answers
apart; when tools are offered and the last message is the user's, it calls
the first tool. Payload shapes follow the ``openai`` package's types
(checked in tests/test_fakes.py).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.fakes.openai_responses import (
    ResponsesState,
    completion_frames,
    response_events,
    responses_usage,
    text_completion,
)
from tests.fakes.server import FakeServer, Reply, ReportedUsage

_ids = itertools.count(1)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") in ("user", "tool"):
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def usage(prompt: int = 11, completion: int = 7, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def reported_usage(report: ReportedUsage) -> dict[str, Any]:
    """``report`` as Chat Completions counts it: cache reads and writes inside ``prompt_tokens``."""
    data = usage(report.prompt, report.completion, report.cached)
    data["prompt_tokens_details"]["cache_write_tokens"] = report.written
    return data


def completion(model: str, content: str | None, tool_calls: list[dict] | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if tool_calls else "stop"}
        ],
        "usage": usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
        **extra,
    }


def chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def stream_chunks(
    model: str, content: str, *, include_usage: bool = True, tool_calls: list[dict] | None = None
) -> list[dict[str, Any]]:
    """A realistic stream: role, content pieces (or tool call deltas), finish, usage."""
    cid = f"chatcmpl-fake{next(_ids)}"
    chunks = [chunk(cid, model, {"role": "assistant", "content": "", "refusal": None})]
    if tool_calls:
        for position, call in enumerate(tool_calls):
            head = {"index": position, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
            chunks.append(chunk(cid, model, {"tool_calls": [head]}))
            chunks.append(chunk(cid, model, {"tool_calls": [{"index": position, "function": {"arguments": call["function"]["arguments"]}}]}))
        chunks.append(chunk(cid, model, {}, "tool_calls"))
    else:
        for word in content.split(" "):
            piece = word if len(chunks) == 1 else " " + word
            chunks.append(chunk(cid, model, {"content": piece}))
        chunks.append(chunk(cid, model, {}, "stop"))
    if include_usage:
        for item in chunks:
            item["usage"] = None
        chunks.append({**chunk(cid, model, {}), "choices": [], "usage": usage()})
    return chunks


def error_body(message: str, code: str | None = None, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


class FakeOpenAI(FakeServer):
    models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.responses = ResponsesState()

    def stream_end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def reply_stream(self, content: str, model: str = "gpt-4o-mini", **kwargs: Any) -> Reply:
        return Reply(chunks=stream_chunks(model, content, **kwargs))

    async def default_reply(self, request: Request, body: bytes) -> Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in self.models]
            return _json({"object": "list", "data": data})
        if "/responses/" in path:
            return self._response_route(request.method, path.split("/responses/", 1)[1])
        if request.method != "POST":
            return _json(error_body("not found", "not_found"), 404)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(error_body("We could not parse the JSON body of your request."), 400)
        if path.endswith("/embeddings"):
            return _json(self._embeddings(payload))
        if path.endswith("/chat/completions"):
            return self._chat(payload)
        if path.endswith("/responses"):
            return self._responses(payload)
        if path.endswith("/completions"):
            return self._completions(payload)
        return _json(error_body("not found", "not_found"), 404)

    def _chat(self, payload: dict[str, Any]) -> Response:
        model = payload.get("model", "gpt-4o-mini")
        messages = payload.get("messages") or []
        tool_calls = None
        if payload.get("tools") and payload.get("tool_choice") != "none" and messages and messages[-1].get("role") == "user":
            name = payload["tools"][0]["function"]["name"]
            tool_calls = [{"id": f"call_fake{next(_ids)}", "type": "function", "function": {"name": name, "arguments": '{"city":"Paris"}'}}]
        content = None if tool_calls else f"echo: {last_user_text(messages)}"
        counted = {"usage": reported_usage(self.report_usage)} if self.report_usage else {}
        if payload.get("stream"):
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            chunks = stream_chunks(model, content or "", include_usage=include_usage, tool_calls=tool_calls)
            if include_usage:
                chunks[-1].update(counted)
            return _sse([self.stream_frame(c) for c in chunks] + [self.stream_end()])
        return _json(completion(model, content, tool_calls, **counted))

    def _responses(self, payload: dict[str, Any]) -> Response:
        status, response = self.responses.create(payload)
        if status == 200 and self.report_usage:
            response["usage"] = responses_usage(self.report_usage)
        if status != 200 or not payload.get("stream"):
            return _json(response, status)
        return _sse(response_events(response))

    def _response_route(self, method: str, rest: str) -> Response:
        response_id, _, tail = rest.partition("/")
        if method == "GET" and tail == "input_items":
            found = self.responses.input_items(response_id)
        elif method == "GET" and not tail:
            found = self.responses.get(response_id)
        elif method == "DELETE" and not tail:
            found = self.responses.delete(response_id)
        else:
            found = None
        if found is None:
            return _json(error_body(f"Response with id '{response_id}' not found.", None), 404)
        return _json(found)

    @staticmethod
    def _completions(payload: dict[str, Any]) -> Response:
        answer = text_completion(payload)
        if not payload.get("stream"):
            return _json(answer)
        return _sse(completion_frames(answer, bool((payload.get("stream_options") or {}).get("include_usage"))))

    @staticmethod
    def _embeddings(payload: dict[str, Any]) -> dict[str, Any]:
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(text)) % 7), 0.5, -0.25]}
            for i, text in enumerate(items)
        ]
        return {
            "object": "list",
            "data": data,
            "model": payload.get("model"),
            "usage": {"prompt_tokens": 3 * len(items), "total_tokens": 3 * len(items)},
        }


def _sse(frames: list[bytes]) -> Response:
    async def body():  # type: ignore[no-untyped-def]
        for frame in frames:
            yield frame

    return StreamingResponse(body(), media_type="text/event-stream")


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")
