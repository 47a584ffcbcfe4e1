"""Splitting a streamed upstream body into server-sent events or lines, for either client.

Both come in batches: everything complete in what one network read brought.
A stream is many small events, and under load several arrive per read;
handing them on together costs one hop through the layers above (provider,
flight, client) per read instead of one per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.errors import UpstreamProtocolError

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""The longest event (or line) an upstream may send: past it, the stream is refused, not buffered on."""


class StreamedBody:
    """The framing half of an upstream answer; a client supplies ``_piece``."""

    __slots__ = ()

    async def _piece(self) -> bytes:
        """The next piece of the body as it arrived; empty at its end."""
        raise NotImplementedError

    async def sse_batches(self) -> AsyncIterator[list[bytes]]:
        """The ``data:`` payloads of server-sent events (multi-line data joined), per read."""
        buffer = b""
        while piece := await self._piece():
            buffer = buffer + piece if buffer else piece
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            if len(buffer) > MAX_EVENT_BYTES:
                raise UpstreamProtocolError("upstream sent a stream event over 16 MiB")
            batch = [data for event in events if (data := _event_data(event)) is not None]
            if batch:
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


def _event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event; None for comments and empty events."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
