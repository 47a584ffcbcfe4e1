"""The stream path inside one process, sockets left out: Sluice's own work per streamed answer.

bench/answers.py's Chat Completions stream (20 chunks, a usage chunk and
``data: [DONE]``) goes the way a live one does: split into server-sent
events (proxy/sse.py), read as chunks by the OpenAI provider, opened as an
attempt opens it (up to its first chunk), pumped into a flight and
assembled for the cache (``Pipeline._pump``), then followed by one client
and rendered. It arrives one event per read (a lightly loaded proxy) or all
in one read (a busy one); ``--comments`` puts an SSE comment before every
event, to see what upstream comments cost when they come.

    python bench/stream_path.py [--streams 20000] [--rounds 5] [--comments]

Prints the best round's microseconds per stream for each arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.answers import CHAT  # noqa: E402
from proxy.config import ProviderConfig  # noqa: E402
from proxy.dedup import Flight, Outcome  # noqa: E402
from proxy.pipeline import Pipeline  # noqa: E402
from proxy.providers.base import Call  # noqa: E402
from proxy.providers.openai import OpenAIProvider  # noqa: E402
from proxy.sse import Comment, StreamedBody  # noqa: E402
from proxy.surfaces.chat import ChatSurface  # noqa: E402


class _Answer(StreamedBody):
    """An upstream answer whose body arrives in the given pieces, one per read."""

    __slots__ = ("_pieces", "status", "raw_headers", "headers")

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = iter(pieces)
        self.status = 200
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: Mapping[str, str] = {}

    async def _piece(self) -> bytes:
        return next(self._pieces, b"")

    def close(self) -> None:
        pass


class _Client:
    """An upstream client that answers every request with the next prepared body."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.waiting = 0

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None) -> _Answer:
        return _Answer(self.pieces)

    async def aclose(self) -> None:
        pass


async def _streams(pieces: list[bytes], count: int) -> float:
    """Seconds for ``count`` streams, each through the whole path."""
    provider = OpenAIProvider(ProviderConfig(name="openai", type="openai", base_url="http://upstream/v1"), _Client(pieces))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    call = Call("gpt-4o-mini", body)
    surface = ChatSurface()
    job = SimpleNamespace(surface=surface)
    started = time.perf_counter()
    for _ in range(count):
        stream = await provider.chat_stream(call)
        await stream.start()
        flight = Flight(True)
        flight.finish(Outcome(completion=await Pipeline._pump(None, flight, job, stream, started)))  # type: ignore[arg-type]
        renderer = surface.renderer(body, False)
        async for batch in flight.follow():
            if type(batch) is not Comment:
                renderer.feed(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--comments", action="store_true", help="an SSE comment before every event")
    args = parser.parse_args()
    events = [b": ping\n\n" + event for event in CHAT.events] if args.comments else CHAT.events
    for name, pieces in (("one event per read", events), ("whole stream in one read", [b"".join(events)])):
        best = min(asyncio.run(_streams(pieces, args.streams)) for _ in range(args.rounds))
        print(f"{name}: {best / args.streams * 1e6:.1f} µs a stream")


if __name__ == "__main__":
    main()
