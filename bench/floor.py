"""The passthrough floor: the least any Python proxy on this stack can cost.

Starlette plus one shared aiohttp ClientSession, forwarding the request bytes
upstream and the answer bytes back, nothing parsed or inspected, for each
client API the bench loads (Chat Completions, Responses, Messages). Sluice's
performance targets are stated as a share of this floor's throughput, so it
runs exactly as Sluice does: uvicorn, uvloop + httptools, one worker, no
access log.

    python bench/floor.py --upstream http://127.0.0.1:9000/v1 --port 9100
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

# The same pool bound as Sluice's default `max_connections`.
MAX_CONNECTIONS = 100


# The client APIs it forwards, chat first: Starlette tries routes in order.
PATHS = ("/chat/completions", "/responses", "/messages")


def build_app(upstream: str) -> Starlette:
    """A Starlette app forwarding each of `PATHS` under /v1 to the same path under `upstream`."""
    session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
        yield
        await session.close()

    def forward(url: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            upstream_response = await session.post(url, data=body, headers={"Content-Type": "application/json"})
            content_type = upstream_response.headers.get("Content-Type", "application/json")
            if content_type.startswith("text/event-stream"):
                return StreamingResponse(
                    _relay(upstream_response), upstream_response.status, media_type=content_type
                )
            content = await upstream_response.read()
            return Response(content, upstream_response.status, media_type=content_type)

        return endpoint

    routes = [Route(f"/v1{path}", forward(upstream + path), methods=["POST"]) for path in PATHS]
    return Starlette(routes=routes, lifespan=lifespan)


async def _relay(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Each piece of the upstream stream as it arrives; the connection is freed at the end."""
    try:
        async for piece in response.content.iter_any():
            yield piece
    finally:
        response.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
