"""uvicorn's httptools protocol with one addition: the hit lane (``proxy.hit_lane``).

uvicorn starts an ASGI task as soon as a request's headers are in. For a
``POST`` to one of the two API paths, this protocol holds that task back
until the body is in too, then asks the lane: a learned cache hit is written
straight to the socket, and the task is never created; anything else starts
the task exactly as uvicorn would have. A body larger than the lane takes, a
request that expects ``100 Continue``, a pipelined request and any error in
the lane all take the ordinary path.

It relies on uvicorn's ``HttpToolsProtocol`` internals (``_start_asgi_task``,
``cycle``, ``on_response_complete``), so pyproject pins uvicorn's minor
version and ``tests/test_hit_lane.py`` exercises every branch here against
the real server.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.hit_lane import MAX_BODY, PATHS, HitLane

LANE_STATE = "sluice.hit_lane"
"""The key under which the app's lifespan state holds the lane."""

_log = logging.getLogger("sluice")


class SluiceProtocol(HttpToolsProtocol):
    _lane: HitLane | None = None
    _hold: bool = False
    _held: tuple[RequestResponseCycle, Any] | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._lane = self.app_state.get(LANE_STATE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._held = None
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._hold = (
            self._lane is not None
            and self.url in PATHS
            and not self.expect_100_continue
            and self.parser.get_method() == b"POST"
        )
        try:
            super().on_headers_complete()
        finally:
            self._hold = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self._hold:
            self._held = (cycle, app)
            return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._held is not None and len(self.cycle.body) > MAX_BODY:
            self._release()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._held is None:
            return
        started = time.perf_counter()
        cycle = self._held[0]
        try:
            answered = self._answer_from_lane(cycle, started)
        except Exception:  # noqa: BLE001 - the lane is an optimisation: never a reason to fail
            _log.exception("hit lane failed; serving this request the ordinary way")
            answered = False
        if not answered:
            self._release()

    def _answer_from_lane(self, cycle: RequestResponseCycle, started: float) -> bool:
        assert self._lane is not None
        hit = self._lane.lookup(self.url, cycle.scope["headers"], bytes(cycle.body))
        if hit is None:
            return False
        self._held = None
        date = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        self.transport.write(self._lane.response(hit, started, date, cycle.keep_alive))
        cycle.response_started = cycle.response_complete = True
        cycle.body = bytearray()
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
        self._lane.finish(hit, started)
        return True

    def _release(self) -> None:
        """Start the held request's ASGI task: it takes the ordinary path."""
        held, self._held = self._held, None
        if held is not None:
            super()._start_asgi_task(*held)
