"""Anthropic's token usage and the hub's (OpenAI's), both ways, in one place.

The anthropic provider reads Anthropic's usage into the hub's for Chat
Completions clients; the Messages surface reads a native answer's usage the
same way for accounting, and writes hub usage back as Anthropic's for
translated answers. One module, so that a round trip gives back what came in.

The two count the prompt differently: OpenAI's ``prompt_tokens`` holds every
prompt token, cache reads (``cached_tokens``) included; Anthropic's
``input_tokens`` leaves out cache reads and writes, which it reports apart.
Both are read with ``accounting.Usage.of``, the one reading of every API's usage.
"""

from __future__ import annotations

from typing import Any

from proxy.accounting import Usage


def to_hub(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Anthropic usage in the hub's terms; None when there is none.

    Cache writes are priced apart (``cache_write``), so ``prompt_tokens_details``
    also says how many: as ``cache_write_tokens``, OpenAI's own name, and as
    ``cache_creation_input_tokens``, Anthropic's (an extension). Thinking tokens
    are inside ``output_tokens``, as OpenAI counts reasoning.
    """
    if not isinstance(usage, dict) or not usage:
        return None
    tokens = Usage.of(usage)
    hub: dict[str, Any] = {
        "prompt_tokens": tokens.prompt,
        "completion_tokens": tokens.completion,
        "total_tokens": tokens.prompt + tokens.completion,
        "prompt_tokens_details": {
            "cached_tokens": tokens.cached,
            "cache_write_tokens": tokens.cache_write,
            "cache_creation_input_tokens": tokens.cache_write,
        },
    }
    details = usage.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    if type(thinking) is int:  # a JSON integer, not a bool
        hub["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return hub


def from_hub(hub: dict[str, Any] | None, estimate: int = 0) -> dict[str, int]:
    """Hub usage in Anthropic's terms: ``input_tokens`` leaves out cache reads and writes.

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
