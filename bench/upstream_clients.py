"""Micro benchmark of the upstream HTTP client alone: aiohttp (as Sluice used it) vs ``Http1Client``.

    .venv/bin/python bench/upstream_clients.py              # starts bench/upstream.py itself
    .venv/bin/python bench/upstream_clients.py --port 9100  # or uses one already running

In one process on uvloop, each client POSTs a 270-byte JSON body to the fake
upstream (bench/upstream.py, another process) and reads the answer: N
requests one after another, then N spread over 16 concurrent tasks. Prints
wall-clock µs per request, which on a machine with one core for the client
is its CPU cost per request plus the upstream's latency (the same for both).
Rounds alternate between the clients so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import ProviderConfig  # noqa: E402
from proxy.http1 import Http1Client  # noqa: E402

BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
    b'{"role":"user","content":"Explain in one short paragraph what a sluice gate does and where one '
    b'would typically find it in use today."}],"max_tokens":128,"temperature":0.2}'
).ljust(270)
HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": "Bearer sk-bench"}


class AiohttpClient:
    """The aiohttp client exactly as proxy/http.py configured and used it before Http1Client."""

    def __init__(self, config: ProviderConfig) -> None:
        connector = aiohttp.TCPConnector(
            limit=config.max_connections, limit_per_host=config.max_connections, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.timeout.connect, sock_read=config.timeout.read)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",), auto_decompress=True
        )

    async def request(self, method, url, headers, body=None):  # type: ignore[no-untyped-def]
        response = await self._session.request(method, url, headers=headers, data=body)
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        await self._session.close()


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        finally:
            self._response.release()


async def run(client, url: str, n: int, concurrency: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Wall-clock and CPU µs per request for n requests over `concurrency` tasks."""
    per_task = n // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            response = await client.request("POST", url, HEADERS, BODY)
            body = await response.read()
            assert response.status == 200 and body, (response.status, body[:80])

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_task * concurrency
    return (time.perf_counter() - start) / done * 1e6, (time.process_time() - cpu) / done * 1e6


async def main(port: int, n: int, rounds: int) -> None:
    config = ProviderConfig(name="bench", type="openai", base_url=f"http://127.0.0.1:{port}/v1")
    url = f"{config.base_url}/chat/completions"
    clients = {"aiohttp": AiohttpClient(config), "http1": Http1Client(config)}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for client in clients.values():  # warm-up: connections, caches
        await run(client, url, 2000, 16)
    for _ in range(rounds):
        for concurrency in (1, 16):
            for name, client in clients.items():
                results.setdefault((name, concurrency), []).append(await run(client, url, n, concurrency))
    for concurrency in (1, 16):
        label = "sequential" if concurrency == 1 else f"{concurrency} concurrent"
        for index, kind in enumerate(("wall", "CPU")):
            a = statistics.median(r[index] for r in results[("aiohttp", concurrency)])
            h = statistics.median(r[index] for r in results[("http1", concurrency)])
            print(f"{label:>14} {kind:>4}: aiohttp {a:6.1f} µs/req   http1 {h:6.1f} µs/req   saved {a - h:5.1f} µs ({a / h:.2f}x)")
    for client in clients.values():
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="a bench/upstream.py already listening here")
    parser.add_argument("-n", type=int, default=20000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream = None
    port = args.port
    if port is None:
        port = _free_port()
        cmd = [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)]
        if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
            cmd = ["taskset", "-c", "1", *cmd]
            os.sched_setaffinity(0, {0})
        upstream = subprocess.Popen(cmd)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
    try:
        uvloop.run(main(port, args.n, args.rounds))
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait()
