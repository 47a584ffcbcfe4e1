"""An Anthropic Messages request as a Chat Completions (hub) body.

What maps, and what does not (docs/providers.md, "Messages API for every
provider"):

- ``system`` becomes one system message, its text blocks joined by a blank line.
- ``messages``: ``text``; ``image`` (base64 → data URL, url → url); ``document``
  (base64 PDF → a ``file`` part, plain text → text); ``tool_use`` → the
  assistant's ``tool_calls`` (``toolu_X`` → ``call_X``, see ``messages_ids``);
  ``tool_result`` → ``tool`` messages, placed before the rest of the user turn
  as Chat Completions requires, their text prefixed with ``TOOL_ERROR_MARKER``
  when ``is_error`` is set, their images moved into that user turn. ``thinking`` and ``redacted_thinking`` blocks of
  assistant turns are dropped: they are another model's private reasoning,
  signed for Anthropic, and no hub provider can take them back.
- ``max_tokens`` → ``max_completion_tokens`` (OpenAI's current name: o-series
  and GPT-5 models reject ``max_tokens``; Gemini and Ollama read both),
  ``stop_sequences`` → ``stop``, ``temperature``, ``top_p``, ``top_k`` (a hub
  extension that Gemini and Ollama carry; OpenAI itself rejects it, naming it),
  ``metadata.user_id`` → ``user``, ``tools`` (``input_schema`` → ``parameters``),
  ``tool_choice``, ``thinking`` and ``output_config`` → ``reasoning_effort``
  and ``response_format``.
- ``cache_control`` (anywhere), ``service_tier``, ``inference_geo``, ``speed``,
  ``diagnostics`` and ``context_management`` ask nothing of the answer's
  content and are dropped.
- Anything else that could change the answer is an ``InvalidRequest`` naming it.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequest
from proxy.surfaces.messages_ids import call_id

TOOL_ERROR_MARKER = "[tool error] "
"""Chat Completions has no failed tool result: the text says it instead."""

SYSTEM_SEPARATOR = "\n\n"

# thinking.budget_tokens → reasoning_effort: below 4,096 tokens is "low", below
# 16,384 "medium", from there "high". Claude Code's "think" (4,000),
# "think hard" (10,000) and "ultrathink" (31,999) land on the three levels; and
# Gemini turns the efforts back into budgets of 1,024, 8,192 and 24,576.
EFFORT_BUDGETS = ((4096, "low"), (16384, "medium"))
HIGHEST_EFFORT = "high"
# output_config.effort: the hub's providers know low, medium and high.
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "output_config",
    }
)
# context_management is Anthropic pruning a context past a size trigger (Claude Code always
# sends it); for other providers Sluice's own history trimming does that job.
_ANSWER_NEUTRAL = frozenset({"cache_control", "service_tier", "inference_geo", "speed", "diagnostics", "context_management"})
# Tool fields that change how Anthropic runs a tool, not what the model answers.
_TOOL_NEUTRAL = frozenset({"type", "cache_control", "eager_input_streaming", "allowed_callers", "defer_loading"})


def to_hub(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Chat Completions body for a Messages request (already ``parse``d); raises ``InvalidRequest``."""
    for name, value in body.items():
        if name not in _MAPPED and name not in _ANSWER_NEUTRAL and value is not None:
            raise _uncarried(f"The parameter '{name}'", name)
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _system_text(system)})
    if history:
        messages.extend(history)
    for index, message in enumerate(body["messages"]):
        messages.extend(_turn(message, f"messages[{index}]"))
    hub: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("stream"):
        hub["stream"] = True
    if body.get("max_tokens") is not None:
        hub["max_completion_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            hub[name] = body[name]
    if body.get("stop_sequences"):
        hub["stop"] = list(body["stop_sequences"])
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        hub["user"] = user
    _add_tools(hub, body)
    _add_reasoning(hub, body)
    return hub


def _system_text(system: str | list[dict[str, Any]]) -> str:
    if isinstance(system, str):
        return system
    return SYSTEM_SEPARATOR.join(block.get("text") or "" for block in system)


def _invalid(param: str, problem: str) -> InvalidRequest:
    """Named in the message too: Anthropic's error shape has no ``param`` field."""
    return InvalidRequest(f"{param}: {problem}", param=param)


def _uncarried(what: str, param: str) -> InvalidRequest:
    return _invalid(param, f"{what} cannot be carried to a provider that does not speak the Messages API.")


# -- turns --


def _turn(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if role == "assistant":
        return [_assistant(content, param)]
    return _user(content, param)


def _user(blocks: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """Tool results first (each a ``tool`` message), then the rest of the turn as one user message.

    A ``tool`` message holds only text, so images inside tool results join
    that user message, after its own parts.
    """
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    result_images: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        at = f"{param}.content[{index}]"
        kind = block["type"]
        if kind == "tool_result":
            results.append(_tool_result(block, at, result_images))
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        else:
            raise _uncarried(f"A '{kind}' block in a user turn", at)
    parts.extend(result_images)
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant(blocks: list[dict[str, Any]], param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(_tool_call(block, f"{param}.content[{index}]"))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _uncarried(f"A '{kind}' block in an assistant turn", f"{param}.content[{index}]")
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    name, identifier = block.get("name"), block.get("id")
    if not isinstance(name, str) or not isinstance(identifier, str):
        raise _invalid(param, "a tool_use block needs a string 'id' and 'name'.")
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": call_id(identifier), "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_result(block: dict[str, Any], param: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``tool`` message; the result's images are added to ``images``."""
    identifier = block.get("tool_use_id")
    if not isinstance(identifier, str):
        raise _invalid(f"{param}.tool_use_id", "a tool_result block needs a string 'tool_use_id'.")
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            at = f"{param}.content[{index}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(part.get("text") or "")
            elif kind == "image":
                images.append(_image(part, at))
            else:
                raise _uncarried(f"A '{kind}' block in a tool result", at)
        text = "\n".join(texts)
    else:
        raise _invalid(f"{param}.content", "must be a string or an array of blocks.")
    if block.get("is_error"):
        text = TOOL_ERROR_MARKER + text
    return {"role": "tool", "tool_call_id": call_id(identifier), "content": text}


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    elif kind == "url":
        url = str(source.get("url") or "")
    else:
        raise _uncarried(f"An image source of type {kind!r}", f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": source.get("data") or ""}
    if kind == "base64" and source.get("media_type") == "application/pdf":
        data = f"data:application/pdf;base64,{source.get('data') or ''}"
        return {"type": "file", "file": {"filename": block.get("title") or "document.pdf", "file_data": data}}
    raise _uncarried(f"A document source of type {kind!r}", f"{param}.source")


# -- tools --


def _add_tools(hub: dict[str, Any], body: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if not tools:
        return  # tool_choice without tools asks nothing: OpenAI even rejects it
    hub["tools"] = [_function(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type")
    if kind == "auto":
        hub["tool_choice"] = "auto"
    elif kind == "any":
        hub["tool_choice"] = "required"
    elif kind == "tool":
        hub["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind == "none":
        hub["tool_choice"] = "none"
    else:
        raise _invalid("tool_choice.type", f"unknown type {kind!r}.")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        hub["parallel_tool_calls"] = False


def _function(tool: dict[str, Any], param: str) -> dict[str, Any]:
    kind = tool.get("type")
    if kind not in (None, "custom") or "input_schema" not in tool:
        raise _uncarried(f"The tool type {kind!r}", f"{param}.type")
    for name, value in tool.items():
        if name not in ("name", "description", "input_schema", "strict") and name not in _TOOL_NEUTRAL and value:
            raise _uncarried(f"The tool field '{name}'", f"{param}.{name}")
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


# -- reasoning and output format --


def _add_reasoning(hub: dict[str, Any], body: dict[str, Any]) -> None:
    effort = _thinking_effort(body.get("thinking"))
    config = body.get("output_config") or {}
    if not isinstance(config, dict):
        raise _invalid("output_config", "must be an object.")
    for name, value in config.items():
        if name == "effort" and value is not None:
            if value not in EFFORTS:
                raise _invalid("output_config.effort", f"unknown effort {value!r}.")
            effort = EFFORTS[value]  # the explicit effort wins over one read from a thinking budget
        elif name == "format" and value is not None:
            hub["response_format"] = _response_format(value)
        elif value is not None:
            raise _uncarried(f"The parameter 'output_config.{name}'", f"output_config.{name}")
    if effort is not None:
        hub["reasoning_effort"] = effort


def _thinking_effort(thinking: dict[str, Any] | None) -> str | None:
    """``enabled`` → an effort from its budget; ``adaptive`` leaves it to the model, ``disabled`` asks none."""
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind in ("adaptive", "disabled"):
        return None
    if kind != "enabled":
        raise _invalid("thinking.type", f"unknown type {kind!r}.")
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise _invalid("thinking.budget_tokens", "must be an integer.")
    return next((effort for limit, effort in EFFORT_BUDGETS if budget < limit), HIGHEST_EFFORT)


def _response_format(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise _invalid("output_config.format", "must be a json_schema format with a schema.")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": spec["schema"], "strict": True}}
