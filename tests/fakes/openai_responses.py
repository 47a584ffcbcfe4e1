"""The fake OpenAI upstream's Responses API and legacy completions, written from OpenAI's
API reference and independently of Sluice's own translation (so a mistake there shows).

Answers echo the last user text (or a function call's output); when function
tools are offered and the last input is the user's, the first tool is called.
Stored responses answer ``GET``/``DELETE /v1/responses/{id}`` and
``…/input_items``, and continue through ``previous_response_id``.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

import orjson

from tests.fakes.server import ReportedUsage

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}{next(_ids)}"


def responses_usage(report: ReportedUsage = ReportedUsage(11, 0, 0, 7)) -> dict[str, Any]:
    """``report`` as the Responses API counts it: cache reads and writes inside ``input_tokens``."""
    return {
        "input_tokens": report.prompt,
        "input_tokens_details": {"cached_tokens": report.cached, "cache_write_tokens": report.written},
        "output_tokens": report.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": report.prompt + report.completion,
    }


def _last_input_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type") == "function_call_output":
            return str(item.get("output"))
        if item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or () if isinstance(p, dict))
    return ""


def _items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    value = payload.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return list(value or ())


class ResponsesState:
    """What the fake keeps of the responses it made."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def create(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A new response for ``payload``; (404, error) for an unknown ``previous_response_id``."""
        items = _items(payload)
        previous = payload.get("previous_response_id")
        history: list[dict[str, Any]] = []
        if previous:
            if previous not in self.stored:
                error = {
                    "message": f"Previous response with id '{previous}' not found.",
                    "type": "invalid_request_error",
                    "param": "previous_response_id",
                    "code": "previous_response_not_found",
                }
                return 404, {"error": error}
            old, old_items = self.stored[previous]
            history = old_items + old["output"]
        tools = [t for t in payload.get("tools") or () if t.get("type") == "function"]
        last = items[-1] if items else {}
        if tools and payload.get("tool_choice") != "none" and last.get("role") == "user":
            output = [
                {
                    "id": _id("fc_"),
                    "type": "function_call",
                    "status": "completed",
                    "call_id": _id("call_"),
                    "name": tools[0]["name"],
                    "arguments": '{"city":"Paris"}',
                }
            ]
        else:
            text = f"echo: {_last_input_text(items)}"
            output = [
                {
                    "id": _id("msg_"),
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                }
            ]
        response = {
            "id": _id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"),
            "metadata": payload.get("metadata") or {},
            "model": payload.get("model"),
            "output": output,
            "parallel_tool_calls": payload.get("parallel_tool_calls", True),
            "previous_response_id": previous,
            "reasoning": {"effort": None, "summary": None},
            "store": payload.get("store", True),
            "temperature": payload.get("temperature", 1.0),
            "text": payload.get("text") or {"format": {"type": "text"}},
            "tool_choice": payload.get("tool_choice", "auto"),
            "tools": payload.get("tools") or [],
            "top_p": payload.get("top_p", 1.0),
            "truncation": payload.get("truncation", "disabled"),
            "usage": responses_usage(),
            "user": payload.get("user"),
        }
        if response["store"] is not False:
            own = [{**item, "id": item.get("id") or _id("msg_")} for item in items]
            self.stored[response["id"]] = (response, history + own)
        return 200, response

    def get(self, response_id: str) -> dict[str, Any] | None:
        entry = self.stored.get(response_id)
        return entry[0] if entry else None

    def input_items(self, response_id: str) -> dict[str, Any] | None:
        entry = self.stored.get(response_id)
        if entry is None:
            return None
        data = entry[1][::-1]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    def delete(self, response_id: str) -> dict[str, Any] | None:
        if self.stored.pop(response_id, None) is None:
            return None
        return {"id": response_id, "object": "response.deleted", "deleted": True}


def response_events(response: dict[str, Any]) -> list[bytes]:
    """The SSE frames OpenAI streams for ``response``: lifecycle, each item built by deltas, completion."""
    frames: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        data = {"type": kind, "sequence_number": len(frames), **fields}
        frames.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

    start = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            emit(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            text = item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            emit(
                "response.content_part.added",
                **where,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
            for position, word in enumerate(text.split(" ")):
                emit("response.output_text.delta", **where, delta=word if position == 0 else " " + word, logprobs=[])
            emit("response.output_text.done", **where, text=text, logprobs=[])
            emit("response.content_part.done", **where, part=item["content"][0])
        else:
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            where = {"item_id": item["id"], "output_index": index}
            emit("response.function_call_arguments.delta", **where, delta=item["arguments"])
            emit("response.function_call_arguments.done", **where, arguments=item["arguments"])
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=response)
    return frames


def text_completion(payload: dict[str, Any]) -> dict[str, Any]:
    prompt = payload.get("prompt")
    text = f"echo: {prompt if isinstance(prompt, str) else ' '.join(map(str, prompt or ()))}"
    return {
        "id": _id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": payload.get("model"),
        "system_fingerprint": "fp_fake",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def completion_frames(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A legacy completion streamed word by word, ending ``[DONE]``."""
    head = {key: completion[key] for key in ("id", "object", "created", "model", "system_fingerprint")}
    words = completion["choices"][0]["text"].split(" ")
    chunks = [
        {
            **head,
            "choices": [{"text": word if i == 0 else " " + word, "index": 0, "logprobs": None, "finish_reason": None}],
        }
        for i, word in enumerate(words)
    ]
    chunks.append({**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
