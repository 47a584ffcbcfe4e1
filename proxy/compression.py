"""Prompt compression: meaning-preserving rewrites and history trimming.

Runs on every request, so the common case (nothing to rewrite, a prompt far
below the context window) is kept to a few string scans: tokens are counted
only for messages that changed, and for trimming only when a byte-based upper
bound says the prompt might not fit.

``safe`` mode rewrites only what cannot change meaning:

- in the text of system, developer, user and assistant messages, outside
  code (fenced blocks, inline code, and lines indented by 4 spaces or a tab,
  Markdown's indented code): interior runs of spaces become one space,
  trailing spaces and tabs go, three or more line breaks become two. Leading
  indentation is kept (it nests Markdown lists). An interior run with tabs
  keeps its tabs and loses its spaces: in pasted spreadsheet or TSV data a
  tab separates fields, so ``a\\t\\tb`` holds an empty cell.
- exact duplicate system/developer messages: all but the first are dropped.
- ``tool`` results that are JSON objects or arrays lose the whitespace between
  tokens; strings and numbers stay byte for byte (no re-serializing, so no
  float or escape changes). Other tool output (file contents, diffs, command
  output) is left alone: agents quote it back verbatim, e.g. in edit calls.

Never touched: code, non-text parts (images, audio, files), ``tool_calls``,
``name`` and every other field of a message. A rewrite that would not lower a
message's token count (BPE is not monotonic) is discarded.

``aggressive`` adds removal of the filler phrases in ``FILLER_PHRASES`` from
user messages: opt-in, because a politeness word can be the point of a prompt.

Providers cache prompt prefixes (cached input costs 10-50% of the price), so
nothing here may make a prompt's start change from one request to the next:
each message is rewritten from its own content alone, and history trimming
drops well below the window at once and then keeps that cut while the
conversation regrows (``trim_history``; measured by
``bench/prefix_stability.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import InvalidRequest
from proxy.tokens import REPLY_PRIMING_TOKENS, count_message, message_upper_bound

MODES = ("off", "safe", "aggressive")
SYSTEM_ROLES = frozenset({"system", "developer"})
TOOL_RESULT_ROLES = frozenset({"tool", "function"})
# Room kept for the answer when the request does not say how long it may be.
DEFAULT_OUTPUT_RESERVE = 4096
# Share of the prompt budget that trimming drops the prompt to when it
# overflows: the cut then holds while the conversation regrows by the rest
# (bench/prefix_stability.py).
LOW_WATER = 0.4


@dataclass(slots=True)
class CompressionResult:
    messages: list[dict]  # new list; untouched messages may be the same objects
    changed: bool  # False => messages is the input list, unchanged
    tokens_saved: int  # prompt tokens removed by rewrites (not counting trimming)
    trimmed_messages: int  # messages dropped by trim_history


class ContextOverflow(InvalidRequest):
    """The prompt does not fit the model even with every droppable turn gone."""

    code = "context_length_exceeded"


def compress(
    messages: list[dict],
    mode: str,
    *,
    model: str,
    context_window: int | None,
    max_output_tokens: int | None,
    trim: bool,
) -> CompressionResult:
    """Rewrite per ``mode``, then trim history to the context window when ``trim``.

    Trimming does not depend on ``mode``: it is its own setting
    (``compression.trim_history``). Never mutates ``messages``.
    """
    if mode not in MODES:
        raise ValueError(f"compression mode must be one of {', '.join(MODES)}, not {mode!r}")
    rewritten, saved = (messages, 0) if mode == "off" else _rewrite(messages, model, aggressive=mode == "aggressive")
    result = rewritten
    if trim and context_window is not None:
        result = trim_history(rewritten, model, context_window, max_output_tokens)
    return CompressionResult(result, result is not messages, saved, len(rewritten) - len(result))


# -- rewriting messages --


def _rewrite(messages: list[dict], model: str, *, aggressive: bool) -> tuple[list[dict], int]:
    """The rewritten list (``messages`` itself when nothing changed) and tokens saved."""
    result: list[dict] = []
    systems: list[dict] = []
    saved = 0
    changed = False
    for message in messages:
        new = _rewrite_message(message, aggressive) if isinstance(message, dict) else message
        if new is not message:
            before, after = count_message(message, model), count_message(new, model)
            if after < before:
                saved += before - after
                changed = True
            else:
                new = message
        if isinstance(new, dict) and new.get("role") in SYSTEM_ROLES:
            if new in systems:
                saved += count_message(new, model)
                changed = True
                continue
            systems.append(new)
        result.append(new)
    return (result, saved) if changed else (messages, 0)


def _rewrite_message(message: dict[str, Any], aggressive: bool) -> dict[str, Any]:
    """The message with its text rewritten, or the same object when nothing changed."""
    role = message.get("role")
    if role in TOOL_RESULT_ROLES:
        rewrite = compact_json
    elif aggressive and role == "user":
        rewrite = drop_fillers
    else:
        rewrite = tidy_whitespace
    content = message.get("content")
    if isinstance(content, str):
        new = rewrite(content)
        return message if new is content else {**message, "content": new}
    if isinstance(content, list):
        parts = [_rewrite_part(part, rewrite) for part in content]
        if any(new is not old for new, old in zip(parts, content)):
            return {**message, "content": parts}
    return message


def _rewrite_part(part: Any, rewrite: Callable[[str], str]) -> Any:
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        return part
    text = part["text"]
    new = rewrite(text)
    return part if new is text else {**part, "text": new}


# -- whitespace --

# A fenced code block (CommonMark: 3+ backticks or tildes, closed by a fence
# of the same character at least as long, or open to the end of the text),
# searched for in "\n" + text so that every fence starts with a line break,
# and scanned line by line, not character by character, for its closing fence.
# Any indentation is accepted, so fences nested in list items count too.
_FENCE = re.compile(
    r"\n[ \t]*(?:"
    r"(?P<bt>`{3,})[^`\n]*(?:(?:\n[^\n]*)*?\n[ \t]*(?P=bt)`*[ \t]*(?=\r?\n|\Z)|(?s:.*))"
    r"|(?P<tl>~{3,})[^\n]*(?:(?:\n[^\n]*)*?\n[ \t]*(?P=tl)~*[ \t]*(?=\r?\n|\Z)|(?s:.*))"
    r")"
)
# Inline code: a backtick run (not part of a longer run) up to the next run of
# the same length. Written to start with its backtick, like every alternative
# in the patterns below, so that the regex engine can skip ordinary characters.
_CODE_SPAN = r"`(?<!``)(?P<code>`*)(?!`)(?s:.*?)(?<!`)`(?P=code)(?!`)"
# A line indented like Markdown's indented code blocks (4 spaces or a tab, at
# the start of a line): kept, since unfenced code pasted into a prompt may
# hold spaces in string literals. A line with a backtick is left to the
# inline-code rule instead, so that a code span starting there stays whole.
_INDENTED_LINE = r"""
      \ \ \ \ (?<![^\n]\ {4})(?P<indented>[ \t]*[^\s`][^\n`]*)(?=\n|\Z)
    | \t(?<![^\n]\t)(?P<indented_tab>[ \t]*[^\s`][^\n`]*)(?=\n|\Z)
"""
_TIDY = re.compile(
    rf"""
      {_CODE_SPAN}
    | {_INDENTED_LINE}
    | \n(?P<blank>(?:[ \t]*\r?\n){{2,}})            # 3+ line breaks, blank-looking lines included
    | \r\n(?P<blank_crlf>(?:[ \t]*\r?\n){{2,}})
    | \ (?P<trailing>[ \t]*)(?=\r?\n|\Z)
    | \t(?P<trailing_tab>[ \t]*)(?=\r?\n|\Z)
    | \ (?<=[^ \t\r\n]\ )(?P<run>[ \t]+)           # interior only: leading indentation is kept
    | \t(?<=[^ \t\r\n]\t)(?P<run_tab>[ \t]+)
    """,
    re.VERBOSE,
)
# Only an interior run of 2+ spaces needs a regex to tell it from
# indentation; starting with a literal, the search is fast.
_INTERIOR_SPACES = re.compile(r"  (?<=[^ \t\r\n]  )")


def tidy_whitespace(text: str) -> str:
    """Whitespace runs collapsed outside code; ``text`` itself when already tidy."""
    if not _may_tidy(text):
        return text
    new = _outside_fences(text, _tidy_prose)
    return text if new == text else new


def _may_tidy(text: str) -> bool:
    """False when no rule can apply, decided with substring scans (code not excluded).

    Single-character scans (tab, CR) are memchr-fast, so the checks that need
    a tab or a CR are made only when the text has one. Runs of tabs alone are
    kept by the rules, so only a tab next to a space can make a change.
    """
    if text.endswith((" ", "\t")) or " \n" in text or "\n\n\n" in text:
        return True
    if "  " in text and _INTERIOR_SPACES.search(text):
        return True
    if "\t" in text and ("\t\n" in text or "\t\r" in text or " \t" in text or "\t " in text):
        return True
    return "\r" in text and (" \r" in text or "\n\r\n\r\n" in text)


def _tidy_prose(text: str) -> str:
    return _TIDY.sub(_tidy_match, text)


def _tidy_match(match: re.Match[str]) -> str:
    kind = match.lastgroup
    found = match.group()
    if kind == "blank":
        return "\n\n"
    if kind == "blank_crlf":
        return "\r\n\r\n"
    if kind == "trailing" or kind == "trailing_tab":
        return ""
    if kind == "run" or kind == "run_tab":
        return found.replace(" ", "") if "\t" in found else " "
    return found


def _outside_fences(text: str, rewrite: Callable[[str], str]) -> str:
    """Apply ``rewrite`` to the parts of ``text`` outside fenced code blocks."""
    if "```" not in text and "~~~" not in text:
        return rewrite(text)
    padded = "\n" + text
    pieces = []
    position = 0
    for fence in _FENCE.finditer(padded):
        # In padded coordinates the fence's line starts one past its "\n";
        # in text coordinates that is fence.start().
        pieces.append(rewrite(text[position : fence.start()]))
        pieces.append(padded[fence.start() + 1 : fence.end()])
        position = fence.end() - 1
    pieces.append(rewrite(text[position:]))
    return "".join(pieces)


# -- JSON tool results --

# JSON strings and the runs of other non-space characters between them:
# joined, they are the text without its whitespace between tokens.
_JSON_PIECES = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^" \t\n\r]+')


def compact_json(text: str) -> str:
    """A JSON object/array without insignificant whitespace; other text as it is.

    Whitespace is removed between tokens rather than the value re-serialized,
    so numbers, escapes and duplicate keys stay exactly as written.
    """
    if not text.lstrip(" \t\n\r").startswith(("{", "[")) or not _space_outside_strings(text):
        return text
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return "".join(_JSON_PIECES.findall(text))


def _space_outside_strings(text: str) -> bool:
    """Whether JSON ``text`` has whitespace between tokens, in a few C-speed string passes.

    Escapes occur only inside strings: with escaped backslashes and quotes
    removed, every other piece between quotes is outside a string.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])
    return " " in outside or "\n" in outside or "\t" in outside or "\r" in outside


# -- filler phrases (aggressive mode) --

# Removed only at the start of a sentence (and greetings only at the start of
# the message), where they carry no instruction. The words "please" and
# "kindly" are also removed after "you" ("could you please") and before a
# sentence's end (", please."), but not elsewhere: "hard to please" keeps it.
FILLER_PHRASES = (
    "hi / hello / hey (there), at the start of the message",
    "I hope you are (you're) doing well / I hope this message finds you well",
    "I was wondering if (whether) you could",
    "I would (I'd) be grateful if you could",
    "I would (I'd) appreciate it if you could",
    "would you be so kind as to",
    "as an AI language model,",
    "please / kindly",
    "thanks / thank you (so much / very much) in advance",
    "any help (is / would be / will be) (greatly / much / really) appreciated",
)
_OPENERS = r"""
      (?<=\A\n)(?:hi|hello|hey)(?:\ there)?[,!.]+(?![ \t]*world\b)
    | I\ hope\ (?:you\ are|you're)\ (?:doing\ )?well[,!.]*
    | I\ hope\ this\ (?:message|email)\ finds\ you\ well[,!.]*
    | I\ was\ wondering\ (?:if|whether)\ you\ could
    | I(?:\ would|'d)\ be\ grateful\ if\ you\ could
    | I(?:\ would|'d)\ appreciate\ it\ if\ you\ could
    | would\ you\ be\ so\ kind\ as\ to
    | as\ an\ AI\ language\ model,?
    | (?:please|kindly)\b[,!.]*
    | (?:thanks|thank\ you)(?:\ so\ much|\ very\ much)?\ in\ advance[,!.]*
    | any\ help\ (?:is|would\ be|will\ be)\ (?:greatly\ |much\ |really\ )?appreciated[,!.]*
"""
_FILLERS = rf"(?:(?:{_OPENERS})(?![\w'])[ \t]*)+"
# Applied to "\n" + text, so that every sentence start follows a line break
# or a space and every alternative starts with a literal character, which
# lets the regex engine skip ordinary text (see _TIDY).
_FILLER = re.compile(
    rf"""
      {_CODE_SPAN}
    | {_INDENTED_LINE}
    | \n(?!\ {{4}}|\t)(?P<line_fillers>[ \t]*{_FILLERS})(?P<line_next>\w?)
    | \ (?<=[.!?]\ )(?P<sentence_fillers>[ \t]*{_FILLERS})(?P<sentence_next>\w?)
    | \ (?<=\byou\ )(?P<after_you>(?:(?:please|kindly)[ \t]+)+)(?=\w)
    | ,(?P<comma_closing>[ \t]*(?:please|kindly)\b)(?=[ \t]*(?:[.!?]|\r?\n|\Z))
    | \ (?<!\bto\ )(?<!\bsay\ )(?P<closing>[ \t]*(?:please|kindly)\b)(?=[ \t]*(?:[.!?]|\r?\n|\Z))
    """,
    re.VERBOSE | re.IGNORECASE,
)
# Substrings (lower-cased) without which no filler phrase can be present.
_FILLER_HINTS = (
    "please", "kindly", "so kind", "hope", "wondering", "grateful", "appreciat", "in advance", "language model"
)
_GREETINGS = ("hi", "hello", "hey")


def drop_fillers(text: str) -> str:
    """Filler phrases removed outside code, then whitespace tidied, until stable.

    Repeated because removing one phrase can start a sentence at another.
    """
    current = text
    while True:
        lowered = current.lower()
        new = current
        if lowered.startswith(_GREETINGS) or any(hint in lowered for hint in _FILLER_HINTS):
            new = _outside_fences(current, _drop_fillers_in_prose)
        new = tidy_whitespace(new)
        if new == current:
            return text if current == text else current
        current = new


def _drop_fillers_in_prose(text: str) -> str:
    return _FILLER.sub(_filler_match, "\n" + text)[1:]


def _filler_match(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "line_next" or kind == "sentence_next":
        fillers = match.group("line_fillers" if kind == "line_next" else "sentence_fillers")
        following = match.group(kind)
        indentation = fillers[: len(fillers) - len(fillers.lstrip(" \t"))]
        # "Please explain" -> "Explain"; a lower-case "please explain" stays lower-case.
        if fillers.lstrip(" \t")[:1].isupper():
            following = following.upper()
        return match.group()[0] + indentation + following
    if kind == "after_you":
        return " "
    if kind == "comma_closing" or kind == "closing":
        return ""
    return match.group()


# -- history trimming --


@dataclass(slots=True)
class _Turn:
    role: str | None  # its first message's
    indexes: list[int]  # of its messages, ascending
    size: int  # tokens


def trim_history(
    messages: list[dict],
    model: str,
    context_window: int,
    max_output_tokens: int | None,
    low_water: float = LOW_WATER,
) -> list[dict]:
    """Drop the oldest turns until prompt and answer fit ``context_window``.

    The answer's room is ``max_output_tokens`` when the request sets it, else
    ``min(DEFAULT_OUTPUT_RESERVE, context_window // 4)``. Kept always: system
    and developer messages, the last user message and the newest message
    (with the tool-call turn it belongs to). A turn is one message, or an
    assistant tool call together with every tool result answering it, so no
    result is ever left without its call. Returns ``messages`` itself when it
    fits; raises ``ContextOverflow`` when even the kept messages do not.

    When the prompt overflows, turns go down to ``low_water`` × the prompt
    budget, and that cut then holds until the window fills again, so the
    provider's prompt cache keeps hitting (see ``_cut``); ``low_water=1``
    drops just enough, turn by turn.
    """
    reserve = max_output_tokens if max_output_tokens is not None else min(DEFAULT_OUTPUT_RESERVE, context_window // 4)
    limit = context_window - reserve
    if REPLY_PRIMING_TOKENS + sum(message_upper_bound(m) for m in messages if isinstance(m, dict)) <= limit:
        return messages
    sizes = [count_message(m, model) if isinstance(m, dict) else 0 for m in messages]
    if REPLY_PRIMING_TOKENS + sum(sizes) <= limit:
        return messages
    turns = _turns(messages, sizes)
    start, pinned = _cut(turns, limit, low_water * limit)
    newest = len(messages) - 1
    kept = [
        turn
        for t, turn in enumerate(turns)
        if t >= start or t == pinned or turn.role in SYSTEM_ROLES or turn.indexes[-1] == newest
    ]
    total = REPLY_PRIMING_TOKENS + sum(turn.size for turn in kept)
    # Without a requested length the reserve is only a courtesy: a prompt that
    # fits the window is still sent, the answer gets whatever room is left.
    if total > limit and (max_output_tokens is not None or total >= context_window):
        raise ContextOverflow(
            f"This model's maximum context length is {context_window} tokens. However, your messages "
            f"need {total} tokens even with every earlier turn dropped, and {reserve} tokens are "
            "reserved for the completion. Please reduce the length of the messages or of the completion.",
            param="messages",
        )
    indexes = {i for turn in kept for i in turn.indexes}
    return [message for i, message in enumerate(messages) if i in indexes]


def _cut(turns: list[_Turn], limit: int, low: float) -> tuple[int, int | None]:
    """The first turn kept, and the user turn kept from before it (or None).

    Replays the conversation as if a request had been sent at the end of
    every turn: whenever the prompt then outgrows ``limit``, the oldest turns
    go until it is down to ``low`` (the newest turn always stays). Every cut
    depends only on the turns up to where it happened, so the next request,
    which resends this one's turns and more, gets the same cuts and then
    maybe one more: its prompt starts with this one's until the window fills
    again. The last user message at a cut stays (pinned) until the next cut,
    even once a newer one arrives, so that its going does not move the start
    in between.
    """
    start = 0
    pinned: int | None = None
    last_user: int | None = None
    fixed = REPLY_PRIMING_TOKENS  # system turns and the pinned user turn
    live = 0  # the turns from start on
    for t, turn in enumerate(turns):
        if turn.role in SYSTEM_ROLES:
            fixed += turn.size
            continue
        live += turn.size
        if turn.role == "user":
            last_user = t
        if fixed + live <= limit:
            continue
        if pinned is not None and pinned != last_user:
            fixed -= turns[pinned].size
            pinned = None
        while fixed + live > low and start < t:
            dropped = turns[start]
            if dropped.role not in SYSTEM_ROLES:
                live -= dropped.size
                if start == last_user:
                    pinned, fixed = start, fixed + dropped.size
            start += 1
    return start, pinned


def _turns(messages: list[dict], sizes: list[int]) -> list[_Turn]:
    """The conversation's turns, ordered by their first message; ``sizes`` are the messages' tokens."""
    turns: list[_Turn] = []
    turn_of_call: dict[str, _Turn] = {}
    last_call_turn: _Turn | None = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in TOOL_RESULT_ROLES:
            # A result joins the call it answers: by id, else the call just before it.
            call_id = message.get("tool_call_id")
            turn = turn_of_call.get(call_id) if isinstance(call_id, str) else None
            if turn is None:
                turn = last_call_turn
            if turn is not None:
                turn.indexes.append(i)
                turn.size += sizes[i]
                continue
        turn = _Turn(role, [i], sizes[i])
        turns.append(turn)
        last_call_turn = None
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            last_call_turn = turn
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    turn_of_call[call["id"]] = turn
    return turns
