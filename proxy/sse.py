"""Splitting a streamed upstream body into server-sent events or lines, for either client.

Both come in batches: everything complete in what one network read brought.
A stream is many small events, and under load several arrive per read;
handing them on together costs one hop through the layers above (provider,
flight, client) per read instead of one per event.

An event that is only comment lines (``: ping``, ``: OPENROUTER PROCESSING``)
comes as a ``Comment`` of its own, in its place between the batches of data.
Telling them apart costs one comparison per read: only a read in which some
event held no data takes the slower path that looks for comments. Comment
lines inside an event that carries data are dropped with its other non-data
lines, as the SSE spec has clients do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.errors import UpstreamProtocolError

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""The longest event (or line) an upstream may send: past it, the stream is refused, not buffered on."""

KEPT_COMMENTS = 8
"""The most upstream comments held for a reader at once: a stream of nothing but comments holds no more as it goes on."""


class Comment(bytes):
    """An upstream event of comment lines only, framed to be passed on as it came (``: ping\\n\\n``).

    Never data: it reaches the streaming clients and nothing else (not the
    assembled answer, the cache or its replay). A type of its own, so that
    the layers above tell it from a batch once per batch, never per event.
    """

    __slots__ = ()


class StreamedBody:
    """The framing half of an upstream answer; a client supplies ``_piece``."""

    __slots__ = ()

    async def _piece(self) -> bytes:
        """The next piece of the body as it arrived; empty at its end."""
        raise NotImplementedError

    async def sse_batches(self) -> AsyncIterator[list[bytes] | Comment]:
        """The ``data:`` payloads of server-sent events (multi-line data joined), per read,
        and each event of comment lines as a ``Comment`` in its place."""
        buffer = b""
        while piece := await self._piece():
            buffer = buffer + piece if buffer else piece
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            if len(buffer) > MAX_EVENT_BYTES:
                raise UpstreamProtocolError("upstream sent a stream event over 16 MiB")
            batch = [data for event in events if (data := _event_data(event)) is not None]
            if len(batch) != len(events):  # an event without data: a comment, maybe
                for part in _in_place(events):
                    yield part
            elif batch:
                yield batch
        data = _event_data(buffer)
        if data is not None:
            yield [data]

    async def line_batches(self) -> AsyncIterator[list[bytes]]:
        """Body lines, line endings stripped, per read."""
        buffer = b""
        while piece := await self._piece():
            buffer = buffer + piece if buffer else piece
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_EVENT_BYTES:
                raise UpstreamProtocolError("upstream sent a stream line over 16 MiB")
            if lines:
                yield [line.rstrip(b"\r") for line in lines]
        if buffer:
            yield [buffer.rstrip(b"\r")]


def _in_place(events: list[bytes]) -> list[list[bytes] | Comment]:
    """A read's events as batches of data with each event of comment lines in its place."""
    parts: list[list[bytes] | Comment] = []
    batch: list[bytes] = []
    for event in events:
        data = _event_data(event)
        if data is not None:
            batch.append(data)
            continue
        comments = [line for line in event.split(b"\n") if line.startswith(b":")]
        if comments:
            if batch:
                parts.append(batch)
                batch = []
            parts.append(Comment(b"\n".join(comments) + b"\n\n"))
    if batch:
        parts.append(batch)
    return parts


def _event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event; None for comments and empty events."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
