"""A hub answer (``chat.completion``) as an Anthropic ``message``, and usage both ways.

Everything here is pure: the JSON answer, the live stream and a cache replay
of the same completion must agree to the byte on ids, stop reasons and usage.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.accounting import Usage
from proxy.surfaces.messages_ids import message_id, tool_use_id

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None, matched: str | None, refused: bool, called: bool) -> str:
    """Anthropic's ``stop_reason`` for a hub ``finish_reason``.

    An answer that calls tools stops for ``tool_use`` even when the upstream
    said ``stop`` (some OpenAI-compatible servers do): Anthropic clients run
    tools on that stop reason.
    """
    if refused:
        return "refusal"
    if called and finish_reason in (None, "stop"):
        return "tool_use"
    if finish_reason == "stop" and matched is not None:
        return "stop_sequence"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def matched_stop(choice: dict[str, Any], request: dict[str, Any]) -> str | None:
    """The stop sequence that ended the answer, when the upstream says which.

    OpenAI does not; vLLM and SGLang name it in the choice's ``stop_reason``,
    and it counts only when it is one the client asked for. Otherwise a stop
    is ``end_turn``.
    """
    said = choice.get("stop_reason")
    if isinstance(said, str) and said in (request.get("stop_sequences") or ()):
        return said
    return None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A call's ``arguments`` JSON as the ``input`` object Anthropic requires.

    Arguments that are not a JSON object (a model's broken JSON, an answer cut
    at ``max_tokens``) become ``{}``: a ``tool_use`` block without an object is
    one the SDK cannot read at all, and the stop reason still tells the client.
    """
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def usage(hub: dict[str, Any] | None, estimate: int = 0) -> dict[str, int]:
    """Hub usage in Anthropic's terms: ``input_tokens`` excludes cache reads and writes.

    ``estimate`` stands in for the prompt when the upstream reported no usage.
    """
    if not hub:
        return {"input_tokens": estimate, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    tokens = Usage.of(hub)
    return {
        "input_tokens": max(0, tokens.prompt - tokens.cached - tokens.cache_write),
        "output_tokens": tokens.completion,
        "cache_creation_input_tokens": tokens.cache_write,
        "cache_read_input_tokens": tokens.cached,
    }


def hub_usage(usage_data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Anthropic usage in the hub's terms, as the anthropic provider reports it for Chat Completions.

    ``prompt_tokens`` counts cache reads and writes too; writes, priced apart,
    appear under OpenAI's name (``cache_write_tokens``) and Anthropic's;
    thinking is inside ``output_tokens``, as OpenAI counts reasoning.
    """
    if not usage_data:
        return None
    cached = int(usage_data.get("cache_read_input_tokens") or 0)
    written = int(usage_data.get("cache_creation_input_tokens") or 0)
    prompt = int(usage_data.get("input_tokens") or 0) + cached + written
    completion = int(usage_data.get("output_tokens") or 0)
    hub: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written, "cache_creation_input_tokens": written},
    }
    thinking = (usage_data.get("output_tokens_details") or {}).get("thinking_tokens")
    if thinking is not None:
        hub["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return hub


def from_hub(completion: dict[str, Any], request: dict[str, Any], estimate: int = 0) -> dict[str, Any]:
    """A ``chat.completion`` as the ``message`` Anthropic would have sent (its first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if said.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": said["reasoning_content"], "signature": ""})
    text = (said.get("content") or "") + (said.get("refusal") or "")
    if text:
        content.append({"type": "text", "text": text})
    for call in said.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(str(call.get("id") or "")),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    matched = matched_stop(choice, request)
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or request.get("model"),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), matched, bool(said.get("refusal")), bool(said.get("tool_calls"))),
        "stop_sequence": matched,
        "usage": usage(completion.get("usage"), estimate),
    }
