"""Token counting (offline: o200k_base or cl100k_base by model) and the context-window table."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading

import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from proxy import tokens
from proxy.tokens import context_window, count_messages, count_text


def encoder(model: str) -> tiktoken.Encoding:
    """The encoder ``count_text`` uses for ``model``."""
    return tokens._encoding(tokens.encoding_name(model))


def test_count_text_matches_known_cl100k_counts() -> None:
    assert count_text("", "gpt-4") == 0
    assert count_text("hello world", "gpt-4") == 2
    assert count_text("tiktoken is great!", "gpt-3.5-turbo") == 6


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "chatgpt-4o-latest",
        "gpt-4.1-nano",
        "gpt-4.5-preview",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5.1",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini-2025-01-31",
        "o4-mini",
        "gpt-oss:20b",
        "openai/gpt-4o",
        "openrouter/openai/o3",
        "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        "GPT-4O",
    ],
)
def test_o200k_models(model: str) -> None:
    assert tokens.encoding_name(model) == "o200k_base"
    assert encoder(model).name == "o200k_base"


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-turbo-2024-04-09",
        "gpt-4-32k",
        "gpt-3.5-turbo",
        "gpt-35-turbo",
        "gemini-2.5-flash",
        "llama3.1:8b",
        "mistral:7b",
        "my-finetune",
        "o1x",  # not a prefix match of o1
        "gpt-4o1",
        "",
    ],
)
def test_cl100k_models_and_the_fallback(model: str) -> None:
    assert tokens.encoding_name(model) == "cl100k_base"
    assert encoder(model) is tokens._encoding("cl100k_base")


def test_count_text_matches_known_o200k_counts() -> None:
    assert encoder("gpt-4o").encode_ordinary("hello world") == [24912, 2375]
    assert count_text("hello world", "gpt-4o") == 2
    assert count_text("The quick brown fox jumps over the lazy dog.", "o3") == 10


def test_counts_follow_the_models_encoding() -> None:
    # o200k_base's larger vocabulary shines outside English; each count is the real one.
    for text, cl100k, o200k in [("नमस्ते दुनिया", 13, 5), ("こんにちは、世界！今日はいい天気ですね。", 17, 10)]:
        assert count_text(text, "gpt-4") == count_text(text, "gemini-2.5-pro") == cl100k
        assert count_text(text, "gpt-4o") == count_text(text, "gpt-5") == o200k
    # The memo keeps the two apart whatever order they are asked in.
    assert count_text("नमस्ते दुनिया", "gpt-4") == 13


def test_shipped_o200k_is_openais_file() -> None:
    """The same bytes OpenAI serves, the pattern and special tokens of tiktoken's own definition."""
    ranks = tokens._o200k_ranks()
    assert len(ranks) == 199998 and sorted(ranks.values()) == list(range(199998))
    # Written back in tiktoken's own format, as tiktoken.load.dump_tiktoken_bpe does.
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    text = b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for token, rank in by_rank)
    assert hashlib.sha256(text).hexdigest() == tokens.O200K_SHA256

    seen: dict[str, object] = {}

    def load_tiktoken_bpe(path: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(path=path, expected_hash=expected_hash)
        return ranks

    # openai_public.o200k_base with its download swapped for our ranks (patched in
    # this test only): what tiktoken itself would build, hash included.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai_public, "load_tiktoken_bpe", load_tiktoken_bpe)
        official = openai_public.o200k_base()
    assert str(seen["path"]).endswith("/o200k_base.tiktoken")
    assert seen["expected_hash"] == tokens.O200K_SHA256
    ours = tokens._o200k_base()
    assert ours["name"] == official["name"] == "o200k_base"
    assert ours["pat_str"] == official["pat_str"]
    assert ours["special_tokens"] == official["special_tokens"] == {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

    encoding = encoder("gpt-4o")
    assert encoding.encode("<|endoftext|><|endofprompt|>", allowed_special="all") == [199999, 200018]
    assert encoding.n_vocab == 200019


def test_o200k_is_loaded_lazily_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_counts", {})
    tokens._encoding.cache_clear()
    try:
        count_text("only cl100k here", "gpt-4")
        count_messages([{"role": "user", "content": "hi"}], "llama3.1:8b")
        assert tokens._encoding.cache_info().currsize == 1  # o200k_base not built
        count_text("now o200k", "gpt-4o")
        assert tokens._encoding.cache_info().currsize == 2
        assert encoder("gpt-4o") is encoder("o3-mini")
    finally:
        tokens._encoding.cache_clear()


def test_a_damaged_o200k_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "O200K_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        tokens._o200k_ranks()


def test_texts_are_counted_once_and_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a long tool result, sent again with every agent turn. " * 40
    expected = count_text(text, "gpt-4o")
    monkeypatch.setattr(tokens, "_counts", {})
    monkeypatch.setattr(tokens, "_COUNTS_KEPT", 3)
    assert count_text(text, "gpt-4o") == expected
    assert list(tokens._counts.values()) == [expected]
    for i in range(5):
        count_text(f"{i} {text}", "gpt-4o")
    assert len(tokens._counts) == 3


def test_special_token_text_is_ordinary_text() -> None:
    assert count_text("<|endoftext|>", "gpt-4") > 1


def test_counting_never_touches_the_network(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Cold encoder loads, with sockets unusable and an empty tiktoken cache, still count."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_counts", {})
    tokens._encoding.cache_clear()
    try:
        assert count_text("counted offline", "gpt-4o") == 3
        assert count_text("नमस्ते दुनिया", "o3") == 5
        assert count_messages([{"role": "user", "content": "hi"}], "gemini-2.5-pro") > 0
        assert count_text("नमस्ते दुनिया", "gpt-4") == 13
    finally:
        tokens._encoding.cache_clear()


def test_o200k_bypasses_tiktokens_registry_and_downloader(monkeypatch: pytest.MonkeyPatch) -> None:
    """o200k_base is never fetched by tiktoken (whose o200k_base is a URL), only read from the package."""

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("tiktoken's loader or registry used")

    monkeypatch.setattr(tiktoken.load, "read_file", refused)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refused)
    monkeypatch.setattr(tiktoken, "get_encoding", refused)
    monkeypatch.setattr(tiktoken.registry, "get_encoding", refused)
    monkeypatch.setattr(tokens, "_counts", {})
    tokens._encoding.cache_clear()
    try:
        assert count_text("hello world", "gpt-5") == 2
    finally:
        tokens._encoding.cache_clear()


def test_encoders_are_loaded_once() -> None:
    assert encoder("gpt-4") is encoder("gemini-2.5-flash")
    assert encoder("gpt-4o") is encoder("gpt-4.1")


# -- messages --


def test_messages_follow_openais_recipe() -> None:
    # OpenAI's cookbook example: 3 per message + role + content, +1 for a name, +3 priming.
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    ]
    expected = 3 + sum(3 + count_text(m["role"], "gpt-4") + count_text(m["content"], "gpt-4") for m in messages)
    expected += 1 + count_text("example_user", "gpt-4")
    assert count_messages(messages, "gpt-4") == expected


def test_text_parts_are_counted_and_images_estimated() -> None:
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]
    as_string = count_messages([{"role": "user", "content": "What is in this image?"}], "gpt-4o")
    assert count_messages([{"role": "user", "content": parts}], "gpt-4o") == as_string + tokens.IMAGE_LOW_DETAIL_TOKENS

    high = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    audio = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    empty = count_messages([{"role": "user", "content": []}], "gpt-4o")
    assert count_messages([{"role": "user", "content": high}], "gpt-4o") == empty + tokens.IMAGE_HIGH_DETAIL_TOKENS
    assert count_messages([{"role": "user", "content": audio}], "gpt-4o") == empty + tokens.NON_TEXT_TOKENS


def test_tool_calls_and_tool_results_are_counted() -> None:
    bare = {"role": "assistant", "content": None}
    call = {
        **bare,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    arguments = count_text("get_weather", "gpt-4o") + count_text('{"city":"Paris"}', "gpt-4o")
    assert tokens.count_message(call, "gpt-4o") == tokens.count_message(bare, "gpt-4o") + 3 + arguments

    result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}
    assert tokens.count_message(result, "gpt-4o") > count_text('{"temp": 21}', "gpt-4o")


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "plain ascii text"},
        {"role": "user", "content": "naïve café — 東京 🚀", "name": "ü"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {}}]},
    ],
)
def test_upper_bound_is_never_below_the_count(message: dict) -> None:
    assert tokens.message_upper_bound(message) >= tokens.count_message(message, "gpt-4o")


# -- context windows --


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4", 8192),
        ("gpt-4-0613", 8192),
        ("gpt-4-32k", 32768),
        ("gpt-4-turbo-2024-04-09", 128000),
        ("gpt-4-1106-preview", 128000),
        ("gpt-4o", 128000),
        ("gpt-4o-2024-08-06", 128000),
        ("gpt-4o-mini", 128000),
        ("gpt-4.1-mini-2025-04-14", 1047576),
        ("gpt-3.5-turbo", 16385),
        ("o3-mini-2025-01-31", 200000),
        ("gemini-2.5-flash", 1048576),
        ("gemini-1.5-pro-002", 2097152),
        ("llama3", 8192),
        ("llama3:8b", 8192),
        ("llama3.1:8b", 131072),
        ("llama3.3:70b-instruct-q4_K_M", 131072),
        ("qwen2.5:7b", 32768),
        ("qwen2.5-coder:32b", 32768),
        ("mistral:7b", 32768),
        ("MISTRAL", 32768),
    ],
)
def test_builtin_windows(model: str, window: int) -> None:
    assert context_window(model, {}) == window


def test_provider_prefixes_are_stripped() -> None:
    assert context_window("openai/gpt-4o", {}) == 128000
    assert context_window("ollama/llama3.1:8b", {}) == 131072
    assert context_window("openrouter/meta-llama/Llama-3.1-8B-Instruct", {}) == 131072
    assert context_window("models/gemini-2.5-flash", {}) == 1048576


def test_unknown_models_and_unrelated_prefixes_have_no_window() -> None:
    assert context_window("my-finetune", {}) is None
    assert context_window("gpt-4.7-preview", {}) is None  # not silently gpt-4's 8192
    assert context_window("o1x", {}) is None


def test_overrides_extend_and_win() -> None:
    overrides = {"my-finetune": 16384, "gpt-4o": 64000, "llama3.1:8b": 8192}
    assert context_window("my-finetune", overrides) == 16384
    assert context_window("my-finetune-v2", overrides) == 16384
    assert context_window("gpt-4o", overrides) == 64000
    assert context_window("gpt-4o-2024-08-06", overrides) == 64000
    assert context_window("gpt-4o-mini", overrides) == 128000  # the longer built-in name still matches better
    assert context_window("ollama/llama3.1:8b", overrides) == 8192
    assert context_window("llama3.1:70b", overrides) == 131072


def test_the_table_ships_as_package_data() -> None:
    table = tokens.builtin_context_windows()
    assert table["gpt-4"] == 8192 and table["gemini-2.5-flash"] == 1048576
    assert all(isinstance(tokens_, int) and tokens_ > 0 for tokens_ in table.values())


def test_configured_encodings_extend_the_table() -> None:
    """``token_encodings`` names a model's encoding: a new model, or one the table gets wrong."""
    try:
        tokens.use_encodings({"gpt-6": "o200k_base", "gpt-4o-legacy": "cl100k_base"})
        assert tokens.encoding_name("gpt-6-mini") == "o200k_base"  # a prefix, as for the table
        assert tokens.encoding_name("openai/gpt-6") == "o200k_base"
        assert tokens.encoding_name("gpt-4o-legacy") == "cl100k_base"  # longer than the table's gpt-4o
        assert tokens.encoding_name("gpt-4o-mini") == "o200k_base"  # the table still applies elsewhere
        assert count_text("नमस्ते दुनिया", "gpt-6") == 5
    finally:
        tokens.use_encodings({})
    assert tokens.encoding_name("gpt-6") == "cl100k_base"


async def test_encodings_are_built_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building an encoder takes a quarter of a second: never on the loop, and once for concurrent callers."""
    built_in: list[str] = []

    def build(name: str) -> str:
        built_in.append(threading.current_thread().name)
        return name

    monkeypatch.setattr(tokens, "_encoding", build)
    monkeypatch.setattr(tokens, "_loads", {})
    await asyncio.gather(*(tokens.load_encoding("gpt-4o") for _ in range(5)))
    await tokens.load_encoding("gpt-4o-mini")  # the same encoding: already there
    assert built_in and threading.main_thread().name not in built_in
    assert len(built_in) == 1
