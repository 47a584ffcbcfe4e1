"""A hub answer (``chat.completion``) as a Responses API ``response`` object.

Every id is derived from the chat completion's id, so the JSON answer, the
live stream, a cache replay and the stored copy of one answer agree without
sharing any state.
"""

from __future__ import annotations

import hashlib
from typing import Any

from proxy.accounting import Usage, token_count

# Echoed from the request as OpenAI echoes them, with its defaults when absent.
_ECHOED_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def derived_id(prefix: str, seed: str, *parts: object) -> str:
    """``prefix`` plus 48 hex digits, the same for the same seed and parts (OpenAI's ids are that long)."""
    material = "\x00".join([seed, *map(str, parts)]).encode()
    return prefix + hashlib.blake2b(material, digest_size=24).hexdigest()


class Ids:
    """The ids of one answer's response and output items."""

    __slots__ = ("seed", "response")

    def __init__(self, chat_id: str) -> None:
        self.seed = chat_id
        self.response = derived_id("resp_", chat_id)

    def reasoning(self) -> str:
        return derived_id("rs_", self.seed)

    def message(self) -> str:
        return derived_id("msg_", self.seed)

    def function_call(self, index: int) -> str:
        return derived_id("fc_", self.seed, index)


def envelope(request: dict[str, Any], response_id: str, created_at: int | float, model: str) -> dict[str, Any]:
    """A response still in progress: what ``response.created`` carries."""
    data: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "usage": None,
    }
    for name, default in _ECHOED_DEFAULTS.items():
        value = request.get(name)
        data[name] = default if value is None else value
    return data


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}], "status": status}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def message_item(item_id: str, content: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or item_id,
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
    }


def output_items(message: dict[str, Any], ids: Ids, incomplete: bool) -> list[dict[str, Any]]:
    """The output items of one hub message, in the order a stream opens them: reasoning, message, calls."""
    items: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        items.append(reasoning_item(ids.reasoning(), message["reasoning_content"]))
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append(text_part(message["content"]))
    if message.get("refusal"):
        content.append(refusal_part(message["refusal"]))
    calls = message.get("tool_calls") or ()
    if content or not calls:
        items.append(message_item(ids.message(), content or [text_part("")]))
    for index, call in enumerate(calls):
        items.append(function_call_item(ids.function_call(index), call))
    if incomplete:  # the answer was cut short in its last item
        items[-1]["status"] = "incomplete"
    return items


def from_hub(completion: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The ``response`` object a ``chat.completion`` stands for."""
    ids = Ids(str(completion.get("id") or ""))
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    reason = _INCOMPLETE.get(choice.get("finish_reason") or "")
    data = envelope(
        request, ids.response, completion.get("created") or 0, completion.get("model") or request.get("model", "")
    )
    data["output"] = output_items(choice.get("message") or {}, ids, reason is not None)
    data["status"] = "incomplete" if reason else "completed"
    if reason:
        data["incomplete_details"] = {"reason": reason}
    data["usage"] = responses_usage(completion.get("usage"))
    return data


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Hub usage in the Responses API's terms."""
    if not usage:
        return None
    tokens = Usage.of(usage)
    return {
        "input_tokens": tokens.prompt,
        "input_tokens_details": {"cached_tokens": tokens.cached, "cache_write_tokens": tokens.cache_write},
        "output_tokens": tokens.completion,
        "output_tokens_details": {"reasoning_tokens": tokens.reasoning},
        "total_tokens": token_count(usage.get("total_tokens")) or tokens.prompt + tokens.completion,
    }


def hub_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Responses usage in the hub's terms, for accounting. Read by ``Usage.of``: a count that is not
    an integer (or details that are not an object) counts as none, not as a failed request."""
    if not isinstance(usage, dict):
        return None
    tokens = Usage.of(usage)
    hub: dict[str, Any] = {
        "prompt_tokens": tokens.prompt,
        "completion_tokens": tokens.completion,
        "total_tokens": token_count(usage.get("total_tokens")) or tokens.prompt + tokens.completion,
        "prompt_tokens_details": {"cached_tokens": tokens.cached},
        "completion_tokens_details": {"reasoning_tokens": tokens.reasoning},
    }
    if tokens.cache_write:
        hub["prompt_tokens_details"]["cache_write_tokens"] = tokens.cache_write
    return hub
