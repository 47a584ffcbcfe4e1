"""Noticing that a client went away while Sluice is still working for it.

ASGI reports a disconnect only through ``receive()``, so someone has to wait
on it. A watcher task per request costs measurable throughput, and most
answers come back long before anyone could hang up, so the watcher starts
only once a request has been waiting for ``WATCH_AFTER`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from starlette.types import Receive

WATCH_AFTER = 0.05


class DisconnectGuard:
    """``async with DisconnectGuard(receive, on_disconnect):`` around a wait.

    ``on_disconnect`` runs when the client goes; it may cancel the current
    task (then the guard swallows that cancellation and sets ``gone``).
    """

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self.gone = False

    async def __aenter__(self) -> DisconnectGuard:
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start_watching)
        return self

    def _start_watching(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self._on_disconnect()

    def cancel_task(self) -> None:
        """An ``on_disconnect`` for waits that have nothing else to clean up."""
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if self.gone and exc_type is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            return True
        return False
