"""The Responses API's stream events: rendered live from hub chunks, replayed from a stored
``response``, and folded back into one from a native stream.

``EventWriter`` is the one place that writes an event, so a live stream and a
replay of the same answer are made of the same frames. OpenAI's order is kept:
``response.created``, ``response.in_progress``, then each output item opened,
filled and closed in turn, then ``response.completed`` (or ``.incomplete``)
carrying the whole response, which is exactly ``from_hub`` of the assembled
completion.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.completions import Chunk, StreamAssembler
from proxy.errors import SluiceError
from proxy.surfaces.responses_answer import (
    Ids,
    envelope,
    from_hub,
    function_call_item,
    message_item,
    reasoning_item,
    refusal_part,
    text_part,
)

_FINAL_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


class EventWriter:
    """Frames events as ``event: <type>`` plus ``data:``, numbering them from 0."""

    __slots__ = ("sequence",)

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    # -- the response --

    def started(self, response: dict[str, Any]) -> bytes:
        return self.event("response.created", response=response) + self.event("response.in_progress", response=response)

    def finished(self, response: dict[str, Any]) -> bytes:
        return self.event(_FINAL_EVENTS.get(response.get("status") or "", "response.completed"), response=response)

    # -- items --

    def item_added(self, index: int, item: dict[str, Any]) -> bytes:
        return self.event("response.output_item.added", output_index=index, item=item)

    def item_done(self, index: int, item: dict[str, Any]) -> bytes:
        return self.event("response.output_item.done", output_index=index, item=item)

    def part_added(self, index: int, item_id: str, part_index: int, part: dict[str, Any]) -> bytes:
        return self.event(
            "response.content_part.added", item_id=item_id, output_index=index, content_index=part_index, part=part
        )

    def part_delta(self, index: int, item_id: str, part_index: int, kind: str, delta: str) -> bytes:
        if kind == "refusal":
            return self.event(
                "response.refusal.delta", item_id=item_id, output_index=index, content_index=part_index, delta=delta
            )
        return self.event(
            "response.output_text.delta",
            item_id=item_id,
            output_index=index,
            content_index=part_index,
            delta=delta,
            logprobs=[],
        )

    def part_done(self, index: int, item_id: str, part_index: int, part: dict[str, Any]) -> bytes:
        where = {"item_id": item_id, "output_index": index, "content_index": part_index}
        if part["type"] == "refusal":
            closing = self.event("response.refusal.done", **where, refusal=part["refusal"])
        else:
            closing = self.event("response.output_text.done", **where, text=part["text"], logprobs=[])
        return closing + self.event("response.content_part.done", **where, part=part)

    def summary_added(self, index: int, item_id: str) -> bytes:
        part = {"type": "summary_text", "text": ""}
        return self.event(
            "response.reasoning_summary_part.added", item_id=item_id, output_index=index, summary_index=0, part=part
        )

    def summary_delta(self, index: int, item_id: str, delta: str) -> bytes:
        return self.event(
            "response.reasoning_summary_text.delta", item_id=item_id, output_index=index, summary_index=0, delta=delta
        )

    def summary_done(self, index: int, item_id: str, text: str) -> bytes:
        where = {"item_id": item_id, "output_index": index, "summary_index": 0}
        part = {"type": "summary_text", "text": text}
        return self.event("response.reasoning_summary_text.done", **where, text=text) + self.event(
            "response.reasoning_summary_part.done", **where, part=part
        )

    def arguments_delta(self, index: int, item_id: str, delta: str) -> bytes:
        return self.event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=delta)

    def arguments_done(self, index: int, item_id: str, name: str, arguments: str) -> bytes:
        return self.event(
            "response.function_call_arguments.done", item_id=item_id, output_index=index, name=name, arguments=arguments
        )

    def whole_item(self, index: int, item: dict[str, Any]) -> bytes:
        """A finished item as the events that build it: opened empty, its content in one delta, closed."""
        kind, item_id = item.get("type"), item.get("id", "")
        if kind == "message":
            out = [self.item_added(index, {**item, "status": "in_progress", "content": []})]
            for part_index, part in enumerate(item.get("content") or ()):
                text_kind = "refusal" if part.get("type") == "refusal" else "output_text"
                text = part.get("refusal" if text_kind == "refusal" else "text") or ""
                empty = refusal_part("") if text_kind == "refusal" else text_part("")
                out.append(self.part_added(index, item_id, part_index, empty))
                if text:
                    out.append(self.part_delta(index, item_id, part_index, text_kind, text))
                out.append(self.part_done(index, item_id, part_index, part))
        elif kind == "function_call":
            out = [self.item_added(index, {**item, "status": "in_progress", "arguments": ""})]
            if item.get("arguments"):
                out.append(self.arguments_delta(index, item_id, item["arguments"]))
            out.append(self.arguments_done(index, item_id, item.get("name", ""), item.get("arguments", "")))
        elif kind == "reasoning":
            out = [self.item_added(index, {**item, "status": "in_progress", "summary": []})]
            for summary in item.get("summary") or ():  # Sluice writes one; a native answer may have more
                out.append(self.summary_added(index, item_id))
                out.append(self.summary_delta(index, item_id, summary.get("text", "")))
                out.append(self.summary_done(index, item_id, summary.get("text", "")))
        else:  # a native answer's built-in tool call: opened and closed whole
            out = [self.item_added(index, item)]
        out.append(self.item_done(index, item))
        return b"".join(out)


def error_event(error: SluiceError, writer: EventWriter | None = None) -> bytes:
    """The ``error`` event that ends a failed stream. It also carries OpenAI's ``error`` object,
    which is what makes the SDKs raise ``APIError`` with its message; a native stream's
    sequence is the upstream's, so there it goes unnumbered."""
    fields = {"code": error.code, "message": error.message, "param": error.param, "error": error.body()["error"]}
    if writer is not None:
        return writer.event("error", **fields)
    return b"event: error\ndata: " + orjson.dumps({"type": "error", **fields}) + b"\n\n"


def in_progress(response: dict[str, Any]) -> dict[str, Any]:
    """A finished response as ``response.created`` showed it."""
    return {
        **response,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
        **({"completed_at": None} if "completed_at" in response else {}),
    }


def replay(response: dict[str, Any]) -> bytes:
    """A whole ``response`` as the stream that would have delivered it."""
    writer = EventWriter()
    out = [writer.started(in_progress(response))]
    out.extend(writer.whole_item(index, item) for index, item in enumerate(response.get("output") or ()))
    out.append(writer.finished(response))
    return b"".join(out)


class _OpenItem:
    """The output item a live stream is filling."""

    __slots__ = ("index", "kind", "item_id", "texts", "part_kind", "parts", "call")

    def __init__(self, index: int, kind: str, item_id: str) -> None:
        self.index = index
        self.kind = kind
        self.item_id = item_id
        self.texts: list[str] = []  # the open part's (or summary's, or arguments') pieces
        self.part_kind: str | None = None  # message: "output_text" or "refusal", while a part is open
        self.parts: list[dict[str, Any]] = []  # message: its closed parts
        self.call: dict[str, Any] = {}  # function call: call_id and name


class HubRenderer:
    """Hub chunks (``chat.completion.chunk`` data) as one client's Responses event stream."""

    def __init__(self, request: dict[str, Any]) -> None:
        self._request = request
        self._writer = EventWriter()
        self._assembler = StreamAssembler()
        self._ids: Ids | None = None
        self._open: _OpenItem | None = None
        self._done: list[dict[str, Any]] = []
        self._call_index: int | None = None  # the hub tool call index the open function call item is

    def feed(self, chunks: list[Chunk]) -> bytes:
        out: list[bytes] = []
        for piece in chunks:
            chunk = piece.data
            self._assembler.add(chunk)
            if self._ids is None:
                self._ids = Ids(str(chunk.get("id") or ""))
                model = chunk.get("model") or self._request.get("model", "")
                out.append(
                    self._writer.started(envelope(self._request, self._ids.response, chunk.get("created") or 0, model))
                )
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) == 0:
                    self._delta(choice.get("delta") or {}, out)
        return b"".join(out)

    def close(self) -> bytes:
        out: list[bytes] = []
        if self._ids is None:  # not a single chunk: nothing to describe
            return b""
        final = from_hub(self._assembler.completion().data, self._request)
        if self._open is None and not self._done:  # an empty answer is still one (empty) message
            self._open_item("message", self._ids.message(), out)
            self._open_part("output_text", out)
        if self._open is not None:
            self._close_item(out, final["status"] == "incomplete")
        out.append(self._writer.finished(final))
        return b"".join(out)

    def fail(self, error: SluiceError) -> bytes:
        out: list[bytes] = []
        if self._ids is not None:
            response = envelope(self._request, self._ids.response, 0, self._request.get("model", ""))
            head = self._assembler.completion().data
            response.update(
                created_at=head.get("created") or 0,
                model=head.get("model") or response["model"],
                status="failed",
                output=self._done,
                error={"code": error.code, "message": error.message},
            )
            out.append(self._writer.event("response.failed", response=response))
        out.append(error_event(error, self._writer))
        return b"".join(out)

    # -- building items as deltas come --

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        assert self._ids is not None
        if delta.get("reasoning_content"):
            if self._open is None or self._open.kind != "reasoning":
                self._open_item("reasoning", self._ids.reasoning(), out)
            self._append(delta["reasoning_content"], out)
        for kind, field in (("output_text", "content"), ("refusal", "refusal")):
            if delta.get(field):
                if self._open is None or self._open.kind != "message":
                    self._open_item("message", self._ids.message(), out)
                if self._open.part_kind != kind:  # type: ignore[union-attr]
                    self._open_part(kind, out)
                self._append(delta[field], out)
        for call in delta.get("tool_calls") or ():
            index = call.get("index", 0)
            function = call.get("function") or {}
            if self._open is None or self._open.kind != "function_call" or self._call_index != index:
                self._call_index = index
                self._open_item("function_call", self._ids.function_call(index), out, call)
            elif function.get("name"):
                self._open.call["name"] += function["name"]
            if function.get("arguments"):
                self._append(function["arguments"], out)

    def _open_item(self, kind: str, item_id: str, out: list[bytes], call: dict[str, Any] | None = None) -> None:
        if self._open is not None:
            self._close_item(out, False)
        item = _OpenItem(len(self._done), kind, item_id)
        if kind == "message":
            skeleton = message_item(item_id, [], "in_progress")
        elif kind == "reasoning":
            skeleton = {**reasoning_item(item_id, "", "in_progress"), "summary": []}
        else:
            function = (call or {}).get("function") or {}
            item.call = {"id": (call or {}).get("id"), "name": function.get("name") or ""}
            skeleton = function_call_item(
                item_id, {"id": item.call["id"], "function": {"name": item.call["name"]}}, "in_progress"
            )
        out.append(self._writer.item_added(item.index, skeleton))
        if kind == "reasoning":
            out.append(self._writer.summary_added(item.index, item_id))
        self._open = item

    def _open_part(self, kind: str, out: list[bytes]) -> None:
        item = self._open
        assert item is not None
        self._close_part(out)
        item.part_kind = kind
        empty = refusal_part("") if kind == "refusal" else text_part("")
        out.append(self._writer.part_added(item.index, item.item_id, len(item.parts), empty))

    def _append(self, text: str, out: list[bytes]) -> None:
        item = self._open
        assert item is not None
        item.texts.append(text)
        if item.kind == "reasoning":
            out.append(self._writer.summary_delta(item.index, item.item_id, text))
        elif item.kind == "function_call":
            out.append(self._writer.arguments_delta(item.index, item.item_id, text))
        else:
            out.append(
                self._writer.part_delta(
                    item.index, item.item_id, len(item.parts), item.part_kind or "output_text", text
                )
            )

    def _close_part(self, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.part_kind is None:
            return
        text = "".join(item.texts)
        part = refusal_part(text) if item.part_kind == "refusal" else text_part(text)
        out.append(self._writer.part_done(item.index, item.item_id, len(item.parts), part))
        item.parts.append(part)
        item.texts, item.part_kind = [], None

    def _close_item(self, out: list[bytes], incomplete: bool) -> None:
        item = self._open
        assert item is not None
        status = "incomplete" if incomplete else "completed"
        if item.kind == "message":
            self._close_part(out)
            done = message_item(item.item_id, item.parts, status)
        elif item.kind == "reasoning":
            text = "".join(item.texts)
            out.append(self._writer.summary_done(item.index, item.item_id, text))
            done = reasoning_item(item.item_id, text, status)
        else:
            arguments = "".join(item.texts)
            out.append(self._writer.arguments_done(item.index, item.item_id, item.call["name"], arguments))
            done = function_call_item(
                item.item_id,
                {"id": item.call["id"], "function": {"name": item.call["name"], "arguments": arguments}},
                status,
            )
        out.append(self._writer.item_done(item.index, done))
        self._done.append(done)
        self._open = None


class ResponsesAssembler:
    """Folds a native Responses stream into its final ``response``.

    The final event carries the whole response, so nothing needs adding up.
    A ``response.failed`` ends the stream too, but as a failure: the stream is
    not ``finished`` and its answer must not be cached.
    """

    def __init__(self) -> None:
        self._response: dict[str, Any] = {}
        self._finished = False

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        response = event.get("response")
        if isinstance(response, dict) and kind in (
            "response.created",
            "response.completed",
            "response.incomplete",
            "response.failed",
        ):
            self._response = response
            self._finished = kind in ("response.completed", "response.incomplete")

    @property
    def finished(self) -> bool:
        return self._finished

    def result(self) -> dict[str, Any]:
        return self._response
