"""A Responses API request, checked and translated to the hub's Chat Completions body.

Only what Sluice can carry to a bridged provider is accepted; anything that
would change the answer and has no Chat Completions equivalent (built-in
tools, background runs, prompt templates…) is a 400 naming it, never
silently dropped (CONTRACT §9).
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest, NotFound
from proxy.surfaces.base import ParsedRequest, require_model

# Fields that describe the caller or the transport, never the answer, or that
# Sluice handles itself (``metadata``, ``store``, ``previous_response_id``).
_SLUICE_SIDE = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "stream_options",
        "metadata",
        "store",
        "previous_response_id",
        "truncation",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "max_tool_calls",  # counts built-in tool calls only, and those are refused
        "top_logprobs",  # only reported with include: message.output_text.logprobs, which is refused
    }
)
_CARRIED = frozenset(
    {
        "temperature",
        "top_p",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "user",
        "include",
    }
)
# Asked for by SDKs as a matter of course, and harmless when there is nothing encrypted to return.
_HARMLESS_INCLUDES = frozenset({"reasoning.encrypted_content"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})


def parse(body: dict[str, Any]) -> ParsedRequest:
    """Check the types of the fields Sluice reads, naming the first that is wrong."""
    model = require_model(body)
    value = body.get("input")
    if value is not None and not isinstance(value, (str, list)):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidRequest(f"'input[{index}]' must be an object.", param=f"input[{index}]")
    _check(body, "stream", bool, "a boolean")
    _check(body, "store", bool, "a boolean")
    _check(body, "parallel_tool_calls", bool, "a boolean")
    _check(body, "background", bool, "a boolean")
    _check(body, "instructions", str, "a string")
    _check(body, "previous_response_id", str, "a string")
    _check(body, "user", str, "a string")
    _check(body, "truncation", str, "a string")
    _check(body, "tools", list, "an array")
    _check(body, "include", list, "an array")
    _check(body, "tool_choice", (str, dict), "a string or an object")
    _check(body, "text", dict, "an object")
    _check(body, "reasoning", dict, "an object")
    _check(body, "metadata", dict, "an object")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidRequest(f"'{name}' must be a number.", param=name)
    for name in ("max_output_tokens", "top_logprobs", "max_tool_calls"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise InvalidRequest("'truncation' must be 'auto' or 'disabled'.", param="truncation")
    return ParsedRequest(model, bool(body.get("stream")))


def _check(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise InvalidRequest(f"'{name}' must be {what}.", param=name)


def previous_not_found(response_id: str) -> NotFound:
    return NotFound(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def to_hub(body: dict[str, Any], history: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The request as a Chat Completions body: instructions, then history, then the input."""
    previous = body.get("previous_response_id")
    if previous and history is None:
        raise previous_not_found(previous)
    _refuse_uncarried(body)
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages.extend(history or ())
    messages.extend(items_to_messages(input_items(body)))
    if not messages:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    hub: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("stream"):
        hub["stream"] = True
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if body.get(name) is not None:
            hub[name] = body[name]
    if body.get("max_output_tokens") is not None:
        hub["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        hub["tools"] = [_tool(tool, index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        hub["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        hub["response_format"] = response_format
    effort = _effort(body.get("reasoning"))
    if effort is not None:
        hub["reasoning_effort"] = effort
    return hub


def _refuse_uncarried(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in _SLUICE_SIDE or name in _CARRIED or value is None or value is False:
            continue
        raise InvalidRequest(
            f"Unsupported parameter: '{name}' is not supported when this provider answers the Responses API.",
            param=name,
        )
    for include in body.get("include") or ():
        if include not in _HARMLESS_INCLUDES:
            raise InvalidRequest(
                f"Unsupported include: '{include}' is not supported when this provider answers the Responses API.",
                param="include",
            )


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return value


def items_to_messages(items: list[dict[str, Any]], param: str = "input") -> list[dict[str, Any]]:
    """Responses items (input or output) as hub messages.

    Function calls join the assistant message just before them, so a turn's
    text and its calls are one assistant message, as Chat Completions has it.
    """
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"{param}[{index}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", where),
                "type": "function",
                "function": {"name": _string(item, "name", where), "arguments": item.get("arguments") or ""},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _output_text(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": content})
        elif kind == "reasoning":
            continue  # a model's own thinking: not input another model can take
        else:
            raise InvalidRequest(
                f"Unsupported input item type '{kind}' when this provider answers the Responses API.",
                param=f"{where}.type",
            )
    return messages


def _string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{where}.{name}' must be a non-empty string.", param=f"{where}.{name}")
    return value


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of user, assistant, system, developer.", param=f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content")
    if role == "assistant":
        return _assistant(content, f"{where}.content")
    parts = [_input_part(part, f"{where}.content[{index}]") for index, part in enumerate(content)]
    if role != "user":  # system and developer messages are text
        return {"role": role, "content": "".join(part.get("text", "") for part in parts)}
    return {"role": role, "content": parts}


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    refusals: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text"):
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            refusals.append(str(part.get("refusal") or ""))
        else:
            raise InvalidRequest(
                f"Unsupported content part type '{kind}' in an assistant message.", param=f"{where}[{index}].type"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not refusals else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    return message


def _input_part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "input_image":
        if part.get("file_id") or not part.get("image_url"):
            raise InvalidRequest(
                "An input_image by file_id is not supported when this provider answers the Responses API; send image_url.",
                param=f"{where}.file_id",
            )
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise InvalidRequest(
        f"Unsupported content part type '{kind}' when this provider answers the Responses API.", param=f"{where}.type"
    )


def _output_text(output: Any, where: str) -> str:
    """A function call's output given as parts: its text."""
    if not isinstance(output, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of parts.", param=where)
    texts = []
    for index, part in enumerate(output):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
            raise InvalidRequest(
                "Only text parts are supported in a function_call_output here.", param=f"{where}[{index}]"
            )
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def _tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise InvalidRequest(
            f"The built-in tool '{kind}' is not supported when this provider answers the Responses API; only function tools are.",
            param=f"{where}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{where}.name' must be a non-empty string.", param=f"{where}.name")
    function: dict[str, Any] = {"name": name}
    for field in ("description", "parameters", "strict"):
        if tool.get(field) is not None:
            function[field] = tool[field]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise InvalidRequest("'tool_choice' must be 'auto', 'none', 'required' or a function.", param="tool_choice")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        f"Unsupported tool_choice type '{choice.get('type')}' when this provider answers the Responses API.",
        param="tool_choice",
    )


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text:
        return None
    if text.get("verbosity") not in (None, "medium"):
        raise InvalidRequest(
            "Unsupported parameter: 'text.verbosity' is not supported by this provider.", param="text.verbosity"
        )
    form = text.get("format")
    if form is None:
        return None
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(form.get("name"), str) or not isinstance(form.get("schema"), dict):
            raise InvalidRequest(
                "'text.format' of type json_schema needs a 'name' and a 'schema'.", param="text.format"
            )
        schema = {key: form[key] for key in ("name", "schema", "strict", "description") if form.get(key) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("'text.format.type' must be text, json_object or json_schema.", param="text.format.type")


def _effort(reasoning: dict[str, Any] | None) -> str | None:
    if not reasoning:
        return None
    effort = reasoning.get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise InvalidRequest(f"Invalid reasoning.effort: {effort!r}.", param="reasoning.effort")
    return effort
