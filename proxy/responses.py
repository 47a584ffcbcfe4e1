"""The pipeline's answers, straight onto ASGI.

``JSONAnswer`` sends bytes that are already JSON (an upstream's body, a cache
entry) with Sluice's headers, skipping the header handling of Starlette's
``Response``, which costs a few microseconds on every request.

Starlette's ``StreamingResponse`` runs every stream in an anyio task group
with a second task that waits for the client to hang up (uvicorn speaks ASGI
2.3, where a disconnect shows only through ``receive``). A task, a task
group and a cancel scope per stream measured ~10% of a short stream's cost.
``EventStream`` sends the same bytes and notices a hang-up with
``DisconnectGuard``, whose watcher starts only once a stream has lasted long
enough for anyone to leave it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.disconnect import DisconnectGuard

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: pass each event on, do not buffer
]
_JSON_TYPE = (b"content-type", b"application/json")


def _encode(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


class JSONAnswer:
    """A complete JSON body and its headers."""

    def __init__(self, body: bytes, headers: Mapping[str, str], status_code: int = 200) -> None:
        self.body = body
        self.status_code = status_code
        self.raw_headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode()), *_encode(headers)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class EventStream:
    """An ASGI answer whose body is ``events``, written as each piece comes.

    When the client goes, the piece being awaited is cancelled and ``events``
    closed, so its ``finally`` (leaving a flight, closing an upstream stream)
    runs at once.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], headers: Mapping[str, str], status_code: int = 200) -> None:
        self.events = events
        self.status_code = status_code
        self.raw_headers = [*_SSE_HEADERS, *_encode(headers)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        guard = DisconnectGuard(receive, lambda: guard.cancel_task())
        try:
            async with guard:
                async for piece in self.events:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        finally:
            await self.events.aclose()
        if not guard.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


Answer = Response | JSONAnswer | EventStream
"""What an endpoint returns: both are ASGI apps that Starlette awaits."""
