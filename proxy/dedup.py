"""Single-flight: identical requests in flight at once share one upstream call.

A ``Flight`` runs the upstream call and records what it produces: the chunks
of a stream as they arrive, then the final answer or error. Every caller (the
one that started it and those that joined) reads from the flight at its own
pace, so a late streaming joiner first gets every chunk already sent, then
the rest live. The call is cancelled only when the last caller leaves.

The upstream's SSE comments reach the callers following at the time, each in
its place among the chunks, but are never part of the answer. Only the latest
``KEPT_COMMENTS`` are held: a caller that joins gets those still held with the
chunks so far, and one that falls further behind misses the oldest.

A JSON answer's call runs inside the first caller's own task (``run_here``):
a task per request measurably costs throughput. If that caller disconnects
while others wait, its task simply goes on working for them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from proxy.completions import Chunk, Completion
from proxy.config import Target
from proxy.errors import SluiceError
from proxy.resilience import Attempts
from proxy.sse import KEPT_COMMENTS, Comment


@dataclass(slots=True)
class Outcome:
    """How a flight ended: the answer (or error) and what it took to get it."""

    completion: Completion | None = None
    usage: dict | None = None
    error: SluiceError | None = None
    target: Target | None = None
    attempts: int = 0
    retries: int = 0
    fallbacks: int = 0
    upstream_seconds: float = 0.0
    first_chunk_seconds: float | None = None
    tokens_saved: int = 0
    trimmed_messages: int = 0
    remote: bool = False  # answered by another process's call (proxy/remote_flights.py)


class Flight:
    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.chunks: list[Chunk] = []
        self.outcome: Outcome | None = None
        self.target: Target | None = None
        self.first_chunk_seconds: float | None = None
        self.attempts = Attempts()  # counted as they happen, so a stream's headers can tell them
        self.tokens_saved = 0
        self.trimmed_messages = 0
        self.native = False  # the stream's chunks are the surface's own events, not hub chunks
        self.upstream_headers: dict[str, str] | None = None  # the opened stream's, for its clients
        self.remote = False  # fed from another process's call through Redis
        self._comments: deque[tuple[int, Comment]] = deque(maxlen=KEPT_COMMENTS)  # (chunks before it, comment)
        self._heard = 0  # comments heard in all
        self._changed = asyncio.Event()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._callers = 0
        self._task: asyncio.Task[None] | None = None

    # -- producer side --

    def start(self, run: Callable[[Flight], Awaitable[None]]) -> None:
        """Run the call in a task of its own (streams: the callers' tasks come and go)."""
        self._task = asyncio.get_running_loop().create_task(self._run(run))

    async def run_here(self, run: Callable[[Flight], Awaitable[None]]) -> None:
        """Run the call in the current task, which the last caller leaving cancels."""
        self._task = asyncio.current_task()
        await self._run(run)

    async def _run(self, run: Callable[[Flight], Awaitable[None]]) -> None:
        try:
            await run(self)
        except asyncio.CancelledError:
            self.finish(Outcome(error=SluiceError("request cancelled", status=499, code="cancelled")))
            raise
        except SluiceError as exc:
            self.finish(Outcome(error=exc, target=self.target))
        except Exception as exc:  # noqa: BLE001 - a bug must reach callers as a 500, not hang them
            self.finish(Outcome(error=SluiceError(f"internal error: {type(exc).__name__}")))
            raise

    def publish(self, chunks: list[Chunk]) -> None:
        self.chunks.extend(chunks)
        self._wake()

    def comment(self, comment: Comment) -> None:
        """An upstream comment, for the callers following, after the chunks published so far."""
        self._comments.append((len(self.chunks), comment))
        self._heard += 1
        self._wake()

    def finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set_result(None)
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- consumer side --

    @property
    def callers(self) -> int:
        return self._callers

    def join(self) -> None:
        self._callers += 1

    def leave(self) -> None:
        """A caller went away; the last one out cancels an unfinished call."""
        self._callers -= 1
        if self._callers <= 0 and self.outcome is None and self._task is not None:
            self._task.cancel()

    async def wait_started(self) -> None:
        """Until the first chunk arrives or the flight ends."""
        while not self.chunks and self.outcome is None:
            await self._changed.wait()

    async def follow(self) -> AsyncIterator[list[Chunk] | Comment]:
        """Every chunk from the first, live, in batches of what arrived since the last look
        (one write to the client per batch), and the comments held, each in its place;
        returns when the flight ends."""
        index = 0
        heard = self._heard - len(self._comments)
        while True:
            if heard != self._heard:  # comments came since the last look
                heard, kept = self._heard, list(self._comments)[heard - self._heard :]
                for position, comment in kept:
                    if position > index:
                        batch = self.chunks[index:position]
                        index = position
                        yield batch
                    yield comment
            if index < len(self.chunks):
                batch = self.chunks[index:]
                index += len(batch)
                yield batch
            elif heard == self._heard:
                if self.outcome is not None:
                    return
                await self._changed.wait()


class FlightRegistry:
    """The flights in progress in this process, by cache key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def get(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def add(self, key: str, flight: Flight) -> None:
        self._flights[key] = flight

    def discard(self, key: str, flight: Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)

    def waiting(self) -> int:
        """Callers waiting on a flight someone else started."""
        return sum(max(0, flight.callers - 1) for flight in self._flights.values())

    def remote_waiting(self) -> int:
        """Callers waiting on a flight another process runs (Redis backend)."""
        return sum(flight.callers for flight in self._flights.values() if flight.remote)
