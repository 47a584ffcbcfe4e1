"""uvicorn's httptools protocol with one addition: the hit lane (``proxy.hit_lane``).

For a ``POST`` to one of the two API paths, this protocol holds the request
back from uvicorn until its body is in, then asks the lane: a learned cache
hit is written straight to the socket, with no request-response cycle, no
ASGI task and no ASGI messages. Anything else is handed to uvicorn exactly
as it arrived (headers, then the body so far), and from then on uvicorn
alone serves it. A body larger than the lane takes, a request that expects
``100 Continue`` or an upgrade, one pipelined behind a request still in
progress, a server shutting down and any error in the lane all take
uvicorn's path.

It relies on ``HttpToolsProtocol`` internals (its parser callbacks, ``url``,
``headers``, ``cycle``, ``on_response_complete``). Rather than pin uvicorn
(and miss its security fixes), ``uvicorn_mismatch`` checks at startup that
the installed uvicorn still has them; when it does not, ``lane_enabled``
turns the lane off with one log line and uvicorn's own protocol serves
everything. ``tests/test_hit_lane.py`` exercises each branch here, most in
the real server; ``make test`` runs it on the newest uvicorn as well.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import Any

import structlog

from proxy.config import Config
from proxy.hit_lane import MAX_BODY, HitLane, LaneHit

from uvicorn import __version__ as UVICORN_VERSION

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
except ImportError:  # uvicorn moved its protocol: ``uvicorn_mismatch`` keeps the lane off
    HttpToolsProtocol = RequestResponseCycle = asyncio.Protocol  # type: ignore[assignment,misc]

LANE_STATE = "sluice.hit_lane"
"""The key under which the app's lifespan state holds the lane."""

_log = structlog.get_logger("sluice")


_EXTENDED = (
    "connection_made", "connection_lost", "shutdown", "on_url", "on_header", "on_headers_complete", "on_body",
    "on_message_complete", "on_response_complete", "_unset_keepalive_if_required",
)  # fmt: skip
"""The ``HttpToolsProtocol`` methods ``SluiceProtocol`` overrides or calls."""

_READ = frozenset({"url", "headers", "cycle", "parser", "expect_100_continue", "server_state", "app_state", "transport"})
"""The attributes it reads, which uvicorn's protocol methods must still set."""


@functools.cache
def uvicorn_mismatch() -> str | None:
    """Why the installed uvicorn cannot carry the lane, or None when its internals are the ones it extends.

    Checked once per process, from the code itself: the methods exist, the
    protocol's own code still sets every attribute read here, the request
    cycle still has ``response_complete``, and the constructor takes the
    arguments uvicorn passes. Logged once when it does not fit.
    """
    reason = _mismatch()
    if reason is not None:
        _log.warning("hit_lane_off", reason=reason, uvicorn=UVICORN_VERSION)
    return reason


def _mismatch() -> str | None:
    if HttpToolsProtocol is asyncio.Protocol:
        return "uvicorn.protocols.http.httptools_impl is gone"
    missing = [name for name in _EXTENDED if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        return f"HttpToolsProtocol has no {', '.join(missing)}"
    names: set[str] = set()
    for function in vars(HttpToolsProtocol).values():
        names.update(getattr(getattr(function, "__code__", None), "co_names", ()))
    unset = sorted(_READ - names)
    if unset:
        return f"HttpToolsProtocol no longer sets {', '.join(unset)}"
    cycle_names = {n for f in vars(RequestResponseCycle).values() for n in getattr(getattr(f, "__code__", None), "co_names", ())}
    if "response_complete" not in cycle_names:
        return "RequestResponseCycle has no response_complete"
    parameters = set(inspect.signature(HttpToolsProtocol.__init__).parameters)
    if not {"config", "server_state", "app_state"} <= parameters:
        return "HttpToolsProtocol takes other constructor arguments"
    return None


def lane_enabled(config: Config) -> bool:
    """Whether this process serves with the hit lane: asked for, a cache to learn from, and a uvicorn that fits."""
    return config.cache.enabled and config.cache.hit_lane and uvicorn_mismatch() is None


class SluiceProtocol(HttpToolsProtocol):
    _lane: HitLane | None = None
    _held: list[bytes] | None = None
    """The body so far of a request held for the lane; None when none is held."""
    _held_size = 0
    _date_source: object = None
    _date = b""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._lane = self.app_state.get(LANE_STATE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._held = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._held is not None:
            self._release()  # uvicorn finishes it, then closes the connection
        super().shutdown()

    def on_headers_complete(self) -> None:
        self._unset_keepalive_if_required()  # an earlier lane answer in this same read armed it
        if (
            self._lane is not None
            and self.url in self._lane.paths
            and not self.expect_100_continue
            and not self.parser.should_upgrade()
            and (self.cycle is None or self.cycle.response_complete)
            and self.parser.get_method() == b"POST"
        ):
            self._held, self._held_size = [], 0
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        held = self._held
        if held is None:
            super().on_body(body)
            return
        held.append(body)
        self._held_size += len(body)
        if self._held_size > MAX_BODY:
            self._release()

    def on_message_complete(self) -> None:
        if self._held is not None:
            started = time.perf_counter()
            try:
                answer = self._lane_answer(started)
            except Exception as exc:  # noqa: BLE001 - the lane is an optimisation: never a reason to fail
                _log.error("hit_lane_failed", error=type(exc).__name__, exc_info=exc)  # served the ordinary way
                answer = None
            if answer is not None:
                self._send(*answer, started)
                return
            self._release()
        super().on_message_complete()

    def _lane_answer(self, started: float) -> tuple[LaneHit, bytes, bool] | None:
        """The lane's hit for the held request, its response bytes and keep-alive; None for a miss."""
        assert self._lane is not None and self._held is not None
        body = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        hit = self._lane.lookup(self.url, self.headers, body)
        if hit is None:
            return None
        parser = self.parser
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        return hit, self._lane.response(hit, started, self._date_headers(), keep_alive), keep_alive

    def _send(self, hit: LaneHit, response: bytes, keep_alive: bool, started: float) -> None:
        self._held = None
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()
        assert self._lane is not None
        try:
            self._lane.finish(hit, started)
        except Exception as exc:  # noqa: BLE001 - answered already; only its telemetry is lost
            _log.error("hit_lane_telemetry_failed", error=type(exc).__name__, exc_info=exc)

    def _release(self) -> None:
        """Hand the held request to uvicorn as if it had just arrived: headers, then the body so far."""
        held, self._held = self._held, None
        super().on_headers_complete()
        for piece in held or ():
            super().on_body(piece)

    def _date_headers(self) -> bytes:
        """uvicorn's default headers (``date``, changed each second), serialized once per change."""
        source = self.server_state.default_headers
        if source is not self._date_source:
            self._date = b"".join(name + b": " + value + b"\r\n" for name, value in source)
            self._date_source = source
        return self._date
