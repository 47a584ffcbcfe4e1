"""The fake upstream's answers, one per client API, built once as bytes.

Each API answers the same 18-word reply with the same token counts, as a JSON
body and as its own stream of server-sent events (without HTTP framing):

    Chat Completions  a chat.completion; 20 chat.completion.chunk events, a
                      usage chunk and ``data: [DONE]``
    Responses         a ``response``; created, in_progress, item and part
                      added, 18 response.output_text.delta, the done events
                      and response.completed with usage
    Messages          a ``message``; message_start, content_block_start, 18
                      content_block_delta, content_block_stop, message_delta
                      with usage, message_stop

tests/test_bench_upstream.py reads them with the official SDKs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

CREATED = 1_700_000_000
WORDS = ["Sure", "!", " Here", " is", " a", " short", " answer", " to", " your", " question", ":"]
WORDS += [" the", " sluice", " gate", " controls", " the", " flow", "."]
TEXT = "".join(WORDS)
INPUT_TOKENS = 52


@dataclass(frozen=True, slots=True)
class Answer:
    """One API's answer: the JSON body, and the stream's events one by one."""

    body: bytes
    events: list[bytes]


# -- Chat Completions ------------------------------------------------------------

CHAT_MODEL = "gpt-4o-mini-2024-07-18"
CHAT_USAGE = {
    "prompt_tokens": INPUT_TOKENS,
    "completion_tokens": len(WORDS),
    "total_tokens": INPUT_TOKENS + len(WORDS),
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def _chat() -> Answer:
    body = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": CREATED,
        "model": CHAT_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": CHAT_USAGE,
        "service_tier": "default",
    }

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        event = {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": CHAT_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def delta(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events = [chunk(delta({"role": "assistant", "content": "", "refusal": None}))]
    events += [chunk(delta({"content": word})) for word in WORDS]
    events += [chunk(delta({}, "stop")), chunk([], CHAT_USAGE), b"data: [DONE]\n\n"]
    return Answer(orjson.dumps(body), events)


# -- Responses and Messages: named events ----------------------------------------


def _named(events: list[dict[str, Any]]) -> list[bytes]:
    """`event: <type>` and its JSON data, as the Responses and Messages APIs stream."""
    return [b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event)) for event in events]


def _responses() -> Answer:
    item_id = "msg_bench0001"
    part = {"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}
    item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    response: dict[str, Any] = {
        "id": "resp_bench0001",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": CHAT_MODEL,
        "output": [item],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 0.2,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(WORDS),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + len(WORDS),
        },
        "user": None,
        "metadata": {},
    }
    started = response | {"status": "in_progress", "output": [], "usage": None}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": item | {"status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": part | {"text": ""}},
        *({"type": "response.output_text.delta", **where, "delta": word, "logprobs": []} for word in WORDS),
        {"type": "response.output_text.done", **where, "text": TEXT, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response},
    ]
    numbered = [event | {"sequence_number": number} for number, event in enumerate(events)]
    return Answer(orjson.dumps(response), _named(numbered))


MESSAGES_MODEL = "claude-sonnet-4-5-20250929"


def _messages() -> Answer:
    usage = {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": len(WORDS),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }
    message = {
        "id": "msg_01Bench0001",
        "type": "message",
        "role": "assistant",
        "model": MESSAGES_MODEL,
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    started = message | {"content": [], "stop_reason": None, "usage": usage | {"output_tokens": 1}}
    events = [
        {"type": "message_start", "message": started},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}} for w in WORDS),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(WORDS)},
        },
        {"type": "message_stop"},
    ]
    return Answer(orjson.dumps(message), _named(events))


CHAT = _chat()
RESPONSES = _responses()
MESSAGES = _messages()
