"""Prompt compression: each rewrite, its guarantees (hypothesis) and history trimming."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.compression import (
    LOW_WATER,
    CompressionResult,
    ContextOverflow,
    compact_json,
    compress,
    drop_fillers,
    tidy_whitespace,
    trim_history,
)
from proxy.errors import InvalidRequest
from proxy.tokens import count_messages

MODEL = "gpt-4o"


def run(messages: list[dict], mode: str = "safe", **kwargs: object) -> CompressionResult:
    options: dict = {"model": MODEL, "context_window": None, "max_output_tokens": None, "trim": False}
    options.update(kwargs)
    return compress(messages, mode, **options)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# -- whitespace --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("too    many   spaces", "too many spaces"),
        ("trailing spaces   \nand tabs\t\nend  ", "trailing spaces\nand tabs\nend"),
        ("one\n\n\n\n\ntwo", "one\n\ntwo"),
        ("blank-looking lines\n  \n\t\n \nnext", "blank-looking lines\n\nnext"),
        ("windows\r\n\r\n\r\n\r\nline  \r\nend", "windows\r\n\r\nline\r\nend"),
        ("- item\n  - nested  item\n    - deeper", "- item\n  - nested item\n    - deeper"),
        ("  leading indentation stays", "  leading indentation stays"),
        # A tab separates fields in pasted spreadsheet data: tabs stay, spaces around them go.
        ("name\t\tage\nbob \t 42", "name\t\tage\nbob\t42"),
    ],
)
def test_whitespace_rules(text: str, expected: str) -> None:
    assert tidy_whitespace(text) == expected


def test_fenced_code_blocks_are_untouched() -> None:
    code = "```python\ndef f(x):    \n    return  'a   b'\n\n\n\n    # end   \n```"
    tilde = "~~~\nkeep    this\n~~~~"
    text = f"Look   at this:\n{code}\nand   this:\n{tilde}\ndone  "
    assert tidy_whitespace(text) == f"Look at this:\n{code}\nand this:\n{tilde}\ndone"


def test_a_fence_in_a_list_item_and_an_unclosed_fence_are_code() -> None:
    nested = "1. Run   it:\n   ```sh\n   ls  -la   \n   ```"
    assert tidy_whitespace(nested) == "1. Run it:\n   ```sh\n   ls  -la   \n   ```"
    unclosed = "See   below\n```\nx  =  1\n\n\n\n"
    assert tidy_whitespace(unclosed) == "See below\n```\nx  =  1\n\n\n\n"


def test_inline_code_is_untouched() -> None:
    text = "Use  `grep  -n   foo`  or ``a  `b`  c``  here"
    assert tidy_whitespace(text) == "Use `grep  -n   foo` or ``a  `b`  c`` here"


def test_indented_code_lines_are_untouched() -> None:
    text = "Why does this fail?\n\n    x  =  'a   b'  \n\tprint(x,   1)\nplain   text"
    assert tidy_whitespace(text) == "Why does this fail?\n\n    x  =  'a   b'  \n\tprint(x,   1)\nplain text"


def test_a_code_span_that_starts_on_an_indented_line_stays_whole() -> None:
    text = "\n     `\n=  ` and   more"
    assert tidy_whitespace(text) == "\n     `\n=  ` and more"


def test_tidy_text_is_returned_as_the_same_object() -> None:
    text = "Already tidy.\n\n- a list\n  - nested\n\n```\ncode  here\n```\n"
    assert tidy_whitespace(text) is text


# -- messages --


def test_safe_mode_rewrites_every_text_role_and_counts_savings() -> None:
    messages = [
        {"role": "system", "content": "Be    brief.   \n\n\n\nAlways."},
        {"role": "developer", "content": "Cite   sources."},
        user("What    is    the    capital    of    France?   "),
        {"role": "assistant", "content": "Paris.    It is    the capital."},
    ]
    result = run(messages)
    assert [m["content"] for m in result.messages] == [
        "Be brief.\n\nAlways.",
        "Cite sources.",
        "What is the capital of France?",
        "Paris. It is the capital.",
    ]
    assert result.changed and result.trimmed_messages == 0
    assert result.tokens_saved == count_messages(messages, MODEL) - count_messages(result.messages, MODEL) > 0


def test_nothing_to_do_returns_the_input_list() -> None:
    messages = [{"role": "system", "content": "Be brief."}, user("What is 2+2? Answer in one word.")]
    for mode in ("off", "safe", "aggressive"):
        result = run(messages, mode)
        assert result.messages is messages
        assert (result.changed, result.tokens_saved, result.trimmed_messages) == (False, 0, 0)


def test_off_mode_rewrites_nothing() -> None:
    messages = [user("lots    of     space")]
    assert run(messages, "off").messages is messages


def test_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        run([user("x")], "maximum")


def test_duplicate_system_messages_are_dropped_keeping_the_first() -> None:
    system = {"role": "system", "content": "You are terse."}
    messages = [system, user("a"), {"role": "system", "content": "You are terse."}, user("b"), dict(system)]
    result = run(messages)
    assert result.messages == [system, user("a"), user("b")]
    assert result.messages[0] is system
    assert result.tokens_saved == count_messages(messages, MODEL) - count_messages(result.messages, MODEL)


def test_system_messages_that_differ_are_all_kept() -> None:
    messages = [
        {"role": "system", "content": "A"},
        {"role": "developer", "content": "A"},
        {"role": "system", "content": "A", "name": "other"},
    ]
    assert run(messages).messages is messages


def test_untouched_messages_are_reused_and_fields_kept() -> None:
    keep = user("fine")
    messy = {"role": "user", "content": "too   spaced", "name": "alice", "x-extra": {"kept": True}}
    result = run([keep, messy])
    assert result.messages[0] is keep
    assert result.messages[1] == {"role": "user", "content": "too spaced", "name": "alice", "x-extra": {"kept": True}}


def test_non_text_parts_are_untouched() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA  AA", "detail": "low"}}
    audio = {"type": "input_audio", "input_audio": {"data": "UklG  RiQ", "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What   is   this?"}, image, audio]}]
    result = run(messages)
    parts = result.messages[0]["content"]
    assert parts[0] == {"type": "text", "text": "What is this?"}
    assert parts[1] is image and parts[2] is audio


def test_tool_calls_are_untouched() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "run", "arguments": '{"cmd": "ls   -la"}'}}]
    messages = [user("go"), {"role": "assistant", "content": "Running   it.", "tool_calls": calls}]
    result = run(messages)
    assert result.messages[1]["content"] == "Running it."
    assert result.messages[1]["tool_calls"] is calls


def test_pretty_json_tool_results_are_compacted_verbatim() -> None:
    value = {"name": "Zoë", "price": 1.10, "big": 12345678901234567890, "tags": ["a  b", "c"], "nested": {"k": None}}
    pretty = json.dumps(value, indent=2, ensure_ascii=False)
    messages = [{"role": "tool", "tool_call_id": "c1", "content": pretty}]
    compacted = run(messages).messages[0]["content"]
    assert compacted == '{"name":"Zoë","price":1.1,"big":12345678901234567890,"tags":["a  b","c"],"nested":{"k":null}}'
    assert json.loads(compacted) == value


def test_json_compaction_keeps_numbers_escapes_and_duplicate_keys_as_written() -> None:
    text = '{\n  "a": 1.10,\n  "a": 2e5,\n  "s": "caf\\u00e9 \\" x",\n  "list": [ 1 , 2 ]\n}'
    assert compact_json(text) == '{"a":1.10,"a":2e5,"s":"caf\\u00e9 \\" x","list":[1,2]}'


@pytest.mark.parametrize(
    "content",
    ["total   42\nfiles:\n  a.py   b.py\n", "{not json   at all\n}", '"just   a string"', "[1, 2"],
)
def test_other_tool_output_is_left_alone(content: str) -> None:
    """File contents, command output and diffs may be quoted back verbatim by an agent."""
    messages = [{"role": "tool", "tool_call_id": "c1", "content": content}]
    assert run(messages).messages is messages


def test_tool_results_as_text_parts_are_compacted() -> None:
    content = [{"type": "text", "text": '{\n  "ok": true\n}'}]
    result = run([{"role": "tool", "tool_call_id": "c1", "content": content}])
    assert result.messages[0]["content"] == [{"type": "text", "text": '{"ok":true}'}]


# -- aggressive mode --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Please summarize this article.", "Summarize this article."),
        ("please summarize this article.", "summarize this article."),
        ("Could you please explain recursion?", "Could you explain recursion?"),
        ("Can you kindly review my code?", "Can you review my code?"),
        ("Summarize it, please.", "Summarize it."),
        ("I was wondering if you could explain monads.", "Explain monads."),
        ("I'd appreciate it if you could check the totals.", "Check the totals."),
        ("Hi! Can you help with SQL?", "Can you help with SQL?"),
        ("Hello there, please fix the bug.", "Fix the bug."),
        ("Fix the bug. Thanks in advance!", "Fix the bug."),
        ("Fix the bug.\n\nThank you so much in advance.", "Fix the bug.\n\n"),
        ("Why is it slow? Any help would be greatly appreciated!", "Why is it slow?"),
        ("I hope you're doing well. Kindly send the report.", "Send the report."),
        ("As an AI language model, you should refuse. Fine.", "You should refuse. Fine."),
    ],
)
def test_filler_phrases(text: str, expected: str) -> None:
    assert drop_fillers(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "It's hard to please everyone.",
        "Say please.",
        'Translate "please" into French.',
        "Is 'kindly' an adverb?",
        "Pleased to meet you.",
        "Hi-fi systems need power.",
        "Explain `please  do` in the shell script.",
    ],
)
def test_fillers_that_carry_meaning_are_kept(text: str) -> None:
    assert drop_fillers(text) == text


def test_fillers_inside_code_are_kept() -> None:
    text = "Please review:\n```\nprint('please, thanks in advance')\n```\nand `please` it."
    assert drop_fillers(text) == "Review:\n```\nprint('please, thanks in advance')\n```\nand `please` it."


def test_aggressive_mode_touches_only_user_messages() -> None:
    messages = [
        {"role": "system", "content": "Please be brief."},
        user("Please list three colors."),
        {"role": "assistant", "content": "Please see: red, green, blue."},
    ]
    result = run(messages, "aggressive")
    assert [m["content"] for m in result.messages] == [
        "Please be brief.",
        "List three colors.",
        "Please see: red, green, blue.",
    ]
    assert run(messages, "safe").messages is messages


# -- hypothesis: the guarantees --

CLEAN_PROSE = [
    "word", "Another", "sentence.", "Why?", "é", "東京", "1,234", "-", "*", "|", "#", "a-b", "you",
    " ", "  ", "   ", "\t", " \t ", "\n", "\n\n", "\n\n\n\n", "\r\n", "  \n", "\n    ", "\n  - ",
    "Please ", "please", "Thanks in advance!", "Could you please ", "I was wondering if you could ",
    "Hi, ", ". ", ", please.", "kindly ",
]  # fmt: skip
# Stray backticks and fence markers make code ambiguous; they are left out
# where a test needs to know exactly which text is code.
STRAY_MARKERS = ["`", "``", "```", "\n```\n", "~~~", "\n~~~~\n"]
CODE_TEXT = st.text(alphabet=st.sampled_from("ab \t\n=(){}'\"#é"), max_size=30)
INLINE_CODE = CODE_TEXT.filter(lambda s: s.strip() != "" and "\n\n" not in s).map(lambda s: f" `{s}` ")
FENCED_CODE = st.tuples(st.sampled_from(["```", "~~~", "````"]), st.sampled_from(["", "python", "js"]), CODE_TEXT).map(
    lambda t: f"\n{t[0]}{t[1]}\n{t[2]}\n{t[0]}\n"
)


@st.composite
def prose_with_code(draw: st.DrawFn, stray_markers: bool = False) -> tuple[str, list[str]]:
    """Text mixing prose and code; returns the text and the code pieces it holds."""
    prose = st.sampled_from(CLEAN_PROSE + STRAY_MARKERS if stray_markers else CLEAN_PROSE)
    pieces, code = [], []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["prose", "prose", "prose", "inline", "fence"]))
        if kind == "prose":
            pieces.append("".join(draw(st.lists(prose, max_size=8))))
        else:
            snippet = draw(INLINE_CODE if kind == "inline" else FENCED_CODE)
            # A fence must start its own line and a code span must not touch another backtick run.
            pieces.append(snippet)
            code.append(snippet.strip(" ") if kind == "inline" else snippet.strip("\n"))
    return "".join(pieces), code


TEXT = prose_with_code(stray_markers=True).map(lambda t: t[0])
IMAGE = st.just({"type": "image_url", "image_url": {"url": "https://example.com/a  b.png"}})
PARTS = st.lists(st.one_of(TEXT.map(lambda t: {"type": "text", "text": t}), IMAGE), max_size=3)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
TOOL_CALLS = st.lists(
    st.builds(
        lambda i, args: {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": args}},
        st.integers(0, 99),
        TEXT,
    ),
    min_size=1,
    max_size=2,
)


@st.composite
def message(draw: st.DrawFn) -> dict:
    role = draw(st.sampled_from(["system", "developer", "user", "user", "assistant", "tool"]))
    if role == "tool":
        indent = draw(st.sampled_from([None, 2, 4]))
        content = draw(st.one_of(JSON_VALUE.map(lambda value: json.dumps(value, indent=indent)), TEXT))
        return {"role": "tool", "tool_call_id": "call_1", "content": content}
    content = draw(st.one_of(TEXT, PARTS) if role == "user" else TEXT)
    result = {"role": role, "content": content}
    if role == "assistant" and draw(st.booleans()):
        result["tool_calls"] = draw(TOOL_CALLS)
    if draw(st.integers(0, 4)) == 0:
        result["name"] = "a  b"
    return result


MESSAGES = st.lists(message(), max_size=6)
MODES = st.sampled_from(["safe", "aggressive"])
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(MESSAGES, MODES)
def test_compression_is_idempotent(messages: list[dict], mode: str) -> None:
    once = run(messages, mode)
    twice = run(once.messages, mode)
    assert twice.messages == once.messages
    assert not twice.changed and twice.tokens_saved == 0


@FAST
@given(MESSAGES, MODES)
def test_compression_never_adds_tokens_and_reports_what_it_saved(messages: list[dict], mode: str) -> None:
    result = run(messages, mode)
    before, after = count_messages(messages, MODEL), count_messages(result.messages, MODEL)
    assert after <= before
    assert result.tokens_saved == before - after


@FAST
@given(MESSAGES, MODES)
def test_the_input_is_never_mutated(messages: list[dict], mode: str) -> None:
    snapshot = copy.deepcopy(messages)
    result = run(messages, mode)
    assert messages == snapshot
    assert result.changed or result.messages is messages


@FAST
@given(prose_with_code(), MODES)
def test_code_is_preserved_byte_for_byte(text_and_code: tuple[str, list[str]], mode: str) -> None:
    text, code = text_and_code
    result = run([user(text)], mode)
    compressed = result.messages[0]["content"] if result.messages else ""
    for snippet in code:
        assert snippet in compressed


@FAST
@given(MESSAGES, MODES)
def test_non_text_parts_tool_calls_and_names_are_untouched(messages: list[dict], mode: str) -> None:
    result = run(messages, mode)
    # Only duplicate system/developer messages may go, so the others line up one to one.
    others = [m for m in messages if m["role"] not in ("system", "developer")]
    kept = [m for m in result.messages if m["role"] not in ("system", "developer")]
    assert len(others) == len(kept)
    for old, new in zip(others, kept):
        assert {k: v for k, v in old.items() if k != "content"} == {k: v for k, v in new.items() if k != "content"}
        if "tool_calls" in old:
            assert new["tool_calls"] is old["tool_calls"]
        if isinstance(old["content"], list):
            for old_part, new_part in zip(old["content"], new["content"], strict=True):
                if old_part["type"] != "text":
                    assert new_part is old_part


# -- history trimming --


def turn(i: int, words: int = 50) -> list[dict]:
    return [
        user(f"question {i} " + " ".join(["lorem"] * words)),
        {"role": "assistant", "content": f"answer {i} " + " ".join(["ipsum"] * words)},
    ]


def tool_exchange(call_id: str, words: int = 50) -> list[dict]:
    call = {"id": call_id, "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": " ".join(["result"] * words)},
    ]


def trim(messages: list[dict], window: int, max_output: int | None = 0, low_water: float = LOW_WATER) -> list[dict]:
    return trim_history(messages, MODEL, window, max_output, low_water)


def test_a_prompt_that_fits_is_returned_as_is() -> None:
    messages = [{"role": "system", "content": "s"}, *turn(1), *turn(2), user("last")]
    assert trim(messages, 128000, None) is messages
    result = run(messages, context_window=128000, trim=True)
    assert result.messages is messages and result.trimmed_messages == 0


def test_oldest_turns_go_first_and_system_and_last_user_stay() -> None:
    system = {"role": "system", "content": "You are helpful."}
    last = user("the actual question")
    messages = [system, *turn(1), *turn(2), *turn(3), last]
    needed = count_messages([system, *turn(3), last], MODEL)
    trimmed = trim(messages, needed)
    assert trimmed == [system, *turn(3), last]
    assert trimmed[0] is system and trimmed[-1] is last


def test_the_answer_reserve_counts() -> None:
    messages = [*turn(1), *turn(2), user("q")]
    window = count_messages(messages, MODEL)
    assert trim(messages, window, max_output=0) is messages
    assert len(trim(messages, window, max_output=10)) < len(messages)


def test_without_a_requested_length_a_default_reserve_is_kept() -> None:
    messages = [*turn(1, words=400), user("q")]
    window = count_messages(messages, MODEL) + 10  # fits, but leaves no room to answer
    assert trim(messages, window, max_output=None, low_water=1) == [turn(1, words=400)[1], user("q")]


def test_without_a_requested_length_a_prompt_that_fits_is_sent_rather_than_refused() -> None:
    """The default reserve is a courtesy: upstream would still accept the prompt."""
    messages = [*turn(1), user("q " * 300)]
    window = count_messages([user("q " * 300)], MODEL) + 10
    assert trim(messages, window, max_output=None) == [user("q " * 300)]
    with pytest.raises(ContextOverflow):
        trim(messages, window, max_output=20)


def test_tool_calls_and_their_results_go_together() -> None:
    messages = [user("task"), *tool_exchange("a"), *tool_exchange("b"), *tool_exchange("c")]
    needed = count_messages([user("task"), *tool_exchange("c")], MODEL)
    assert trim(messages, needed + 5) == [user("task"), *tool_exchange("c")]


def test_parallel_tool_results_follow_their_call() -> None:
    calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ("x", "y")]
    exchange = [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "x", "content": "one " * 100},
        {"role": "tool", "tool_call_id": "y", "content": "two " * 100},
    ]
    messages = [*exchange, *turn(1), user("q")]
    trimmed = trim(messages, count_messages([*turn(1), user("q")], MODEL) + 50)
    assert trimmed == [*turn(1), user("q")]


def test_the_newest_message_stays_even_after_the_last_user_message() -> None:
    messages = [user("task"), *tool_exchange("a"), *tool_exchange("b")]
    assert trim(messages, count_messages([user("task"), *tool_exchange("b")], MODEL)) == [
        user("task"),
        *tool_exchange("b"),
    ]


def test_overflow_raises_an_openai_shaped_400() -> None:
    system = {"role": "system", "content": "rules " * 300}
    messages = [system, *turn(1), user("question " * 300)]
    with pytest.raises(ContextOverflow) as caught:
        trim(messages, 500, max_output=100)
    error = caught.value
    assert isinstance(error, InvalidRequest)
    assert error.status == 400 and error.code == "context_length_exceeded" and error.param == "messages"
    assert "500" in error.message


def test_overflow_through_compress() -> None:
    with pytest.raises(ContextOverflow):
        run([user("word " * 1000)], context_window=100, max_output_tokens=10, trim=True)


def test_trimming_is_reported_apart_from_rewrites() -> None:
    messages = [*turn(1), *turn(2), user("last    question")]
    window = count_messages([*turn(2), user("last question")], MODEL) + 2
    result = run(messages, "safe", context_window=window, max_output_tokens=0, trim=True)
    assert result.messages == [*turn(2), user("last question")]
    assert result.trimmed_messages == 2 and result.changed
    assert result.tokens_saved == count_messages([user("last    question")], MODEL) - count_messages(
        [user("last question")], MODEL
    )


def test_trim_false_or_unknown_window_never_trims() -> None:
    messages = [*turn(1), user("q")]
    assert run(messages, "off", context_window=10, trim=False).messages is messages
    assert run(messages, "off", context_window=None, trim=True).messages is messages


CONVERSATION = st.lists(
    st.one_of(
        st.builds(lambda n: [user("u " * n)], st.integers(1, 60)),
        st.builds(lambda n: [{"role": "assistant", "content": "a " * n}], st.integers(1, 60)),
        st.builds(lambda n: [{"role": "system", "content": "s " * n}], st.integers(1, 20)),
        st.builds(lambda i, n: tool_exchange(f"id{i}", n), st.integers(0, 5), st.integers(1, 60)),
    ),
    min_size=1,
    max_size=10,
).map(lambda turns: [m for t in turns for m in t])


@FAST
@given(CONVERSATION, st.integers(20, 600), st.one_of(st.none(), st.integers(0, 100)))
def test_trimming_fits_keeps_what_it_must_and_never_orphans_results(
    messages: list[dict], window: int, max_output: int | None
) -> None:
    try:
        trimmed = trim_history(messages, MODEL, window, max_output)
    except ContextOverflow:
        return
    reserve = max_output if max_output is not None else min(4096, window // 4)
    total = count_messages(trimmed, MODEL)
    assert total + reserve <= window or (max_output is None and total < window)
    assert [m for m in messages if m["role"] == "system"] == [m for m in trimmed if m["role"] == "system"]
    users = [m for m in messages if m["role"] == "user"]
    if users:
        assert any(m is users[-1] for m in trimmed)
    assert trimmed[-1] is messages[-1]
    # Every kept message is one of the input's, in order, and no result lost its call.
    positions = [next(i for i, m in enumerate(messages) if m is kept) for kept in trimmed]
    assert positions == sorted(positions)
    calls = set()
    for m in trimmed:
        calls.update(call["id"] for call in m.get("tool_calls", ()))
        if m["role"] == "tool":
            assert m["tool_call_id"] in calls


def test_the_cut_holds_while_the_conversation_grows() -> None:
    """Each request resends the history plus a new turn; the upstream prompt keeps its
    start (and the provider's prompt cache its hits) until the window fills again."""
    system = {"role": "system", "content": "You are terse."}
    history: list[dict] = []
    sent: list[list[dict]] = []
    for i in range(60):
        history += turn(i, words=40)
        sent.append(trim_history([system, *history, user(f"next {i}")], MODEL, 2000, 200))
    trimmed = [prompt for prompt in sent if len(prompt) < len(history) + 2]
    assert len(trimmed) > 40, "the conversation outgrew the window early"
    stable = sum(
        1 for before, after in itertools.pairwise(trimmed) if after[: len(before) - 1] == before[:-1]
    )
    assert stable / (len(trimmed) - 1) >= 0.9
    for prompt in trimmed:
        assert prompt[0] is system and count_messages(prompt, MODEL) + 200 <= 2000


def test_low_water_one_drops_turn_by_turn() -> None:
    messages = [*turn(1), *turn(2), *turn(3), user("q")]
    window = count_messages([*turn(2)[1:], *turn(3), user("q")], MODEL)
    assert trim(messages, window, low_water=1) == [*turn(2)[1:], *turn(3), user("q")]
    assert len(trim(messages, window)) < len(messages) - 3, "the prompt drops to the low-water mark at once"


def test_an_agent_session_keeps_its_cut_and_its_task_through_tool_calls() -> None:
    """One task's tool calls outgrow the window: the cut falls behind the task's user
    message, which stays (pinned) even after the next task begins, until the next cut."""
    system = {"role": "system", "content": "You are an agent."}
    history: list[dict] = [system]
    trimmed: list[list[dict]] = []
    for task in range(12):
        history.append(user(f"task {task}"))
        for step in range(4):
            history += tool_exchange(f"t{task}s{step}", words=120)
            prompt = trim_history(history, MODEL, 2000, 500)
            assert prompt[0] is system and count_messages(prompt, MODEL) + 500 <= 2000
            assert [m for m in prompt if m["role"] == "user"][-1] is history[-2 * step - 3], "the task stays"
            if prompt is not history:
                trimmed.append(prompt)
    jumps = sum(1 for before, after in itertools.pairwise(trimmed) if after[: len(before)] != before)
    assert len(trimmed) > 30 and jumps <= len(trimmed) // 4


@FAST
@given(
    CONVERSATION.map(lambda ms: [{**m, "content": m["content"] and m["content"] + "   \n\n\n\n x"} for m in ms]),
    st.sampled_from(["safe", "aggressive"]),
)
def test_a_message_is_compressed_the_same_whatever_follows_it(messages: list[dict], mode: str) -> None:
    """The next request resends this one's messages and more: their compressed form, and so the
    upstream prompt's start (the provider's prompt cache), must not change."""
    whole = run(messages, mode).messages
    for end in range(1, len(messages)):
        earlier = run(messages[:end], mode).messages
        assert earlier == whole[: len(earlier)]
