"""Anthropic ids derived from the hub's, both ways, as pure functions.

A translated answer reaches a client three ways (the JSON answer, a live
stream, a cache replay) and all three must show the same ids; deriving them
from the hub's ids, never drawing them at random, is what makes that so.
Tool ids must also come back: a ``tool_result`` names the ``tool_use`` id the
client was given, and the hub's provider wants its own call id (Gemini keeps
a thought signature inside it), so ``call_X`` and ``toolu_X`` map onto each
other exactly.
"""

from __future__ import annotations

MESSAGE_PREFIX = "msg_"
TOOL_USE_PREFIX = "toolu_"
CALL_PREFIX = "call_"
CHAT_PREFIX = "chatcmpl-"


def message_id(chat_id: str | None) -> str:
    """``msg_`` and the tail of the ``chatcmpl-…`` id, so a message can be traced to its upstream call."""
    tail = (chat_id or "").removeprefix(CHAT_PREFIX)
    return MESSAGE_PREFIX + (tail or "0")


def tool_use_id(call_id: str) -> str:
    """``call_X`` → ``toolu_X``; any other call id keeps its whole text after ``toolu_``."""
    return TOOL_USE_PREFIX + call_id.removeprefix(CALL_PREFIX)


def call_id(tool_use: str) -> str:
    """The inverse of ``tool_use_id`` for the ids it made; a client's own ids (not ``toolu_…``) stay as they are."""
    if tool_use.startswith(TOOL_USE_PREFIX):
        return CALL_PREFIX + tool_use[len(TOOL_USE_PREFIX) :]
    return tool_use
