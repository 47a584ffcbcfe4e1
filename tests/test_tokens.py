"""Token counting (offline, cl100k_base for every model) and the context-window table."""

from __future__ import annotations

import socket

import pytest

from proxy import tokens
from proxy.tokens import context_window, count_messages, count_text


def test_count_text_matches_known_cl100k_counts() -> None:
    assert count_text("", "gpt-4") == 0
    assert count_text("hello world", "gpt-4") == 2
    assert count_text("tiktoken is great!", "gpt-3.5-turbo") == 6


def test_every_model_is_counted_with_the_bundled_encoding() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    counts = {count_text(text, model) for model in ("gpt-4o", "gpt-4.1", "o3", "gemini-2.5-flash", "llama3.1:8b", "x")}
    assert counts == {10}


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
    """A cold encoder load, with sockets unusable and an empty tiktoken cache, still counts."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_counts", {})
    tokens._encoding.cache_clear()
    try:
        assert count_text("counted offline", "gpt-4o") == 3
        assert count_messages([{"role": "user", "content": "hi"}], "gemini-2.5-pro") > 0
    finally:
        tokens._encoding.cache_clear()


def test_encoder_is_loaded_once() -> None:
    assert tokens._encoding() is tokens._encoding()


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
