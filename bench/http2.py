"""HTTP/2 or HTTP/1.1 to a TLS upstream: what ``http2: true`` costs Sluice.

    .venv/bin/python bench/http2.py             # ~10 s per measurement, writes bench/HTTP2.md
    .venv/bin/python bench/http2.py --repeat 3  # median of 3 interleaved rounds
    .venv/bin/python bench/http2.py --quick     # ~2 s per measurement, prints only

One fake OpenAI upstream over TLS offers ``h2`` and ``http/1.1`` by ALPN; two
Sluice processes forward to it, one with ``http2: true`` (httpx + h2, streams
multiplexed over few connections), one with ``http2: false`` (Http1Client,
HTTP/1.1, a connection per request in flight). wrk loads Sluice over plain
HTTP/1.1, as in bench/run.py, with the same pinning: Sluice alone on core 0,
upstream and wrk on core 1. Sluice trusts the upstream's throwaway CA through
``SSL_CERT_FILE``.

The upstream is bench/upstream.py's precomputed answers behind TLS: its
httptools protocol for HTTP/1.1 connections and a small h2 protocol for
HTTP/2 ones, so neither side of the comparison waits on a slow server.

    python bench/http2.py --serve-upstream --port 9443 --delay-ms 50 --tls DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import orjson
import uvloop

import answers
import services
import upstream as plain
from loadgen import Request, WrkResult
from procs import OUT, Process, StartError, free_port, tcp_open
from report import Cell, write_section
from run import Bench, median

REPORT = Path(__file__).resolve().parent / "HTTP2.md"
TLS_DIR = OUT / "tls"


@dataclass(frozen=True, slots=True)
class Workload:
    key: str
    title: str
    connections: int
    delay_ms: int
    stream: bool = False


WORKLOADS = [
    Workload("delay50", "Non-streaming, 50 ms upstream delay, c=64", 64, 50),
    Workload("c16", "Non-streaming, no delay, c=16", 16, 0),
    Workload("stream16", "Streaming (20 chunks + usage), no delay, c=16", 16, 0, stream=True),
]
TARGETS = {"http2: false (Http1Client, HTTP/1.1)": False, "http2: true (httpx + h2, HTTP/2)": True}


# -- the TLS upstream ----------------------------------------------------------

JSON_HEAD = [(b":status", b"200"), (b"content-type", b"application/json")]
STREAM_HEAD = [(b":status", b"200"), (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
NOT_FOUND_HEAD = [(b":status", b"404"), (b"content-length", b"0")]


class TlsUpstream(plain.Upstream):
    """bench/upstream.py's shared state, plus connections and requests counted per protocol."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay, chaos=0.0, seed=1)
        self.connections: Counter[str] = Counter()

    def stats(self) -> bytes:
        body = orjson.dumps({"calls": sum(self.outcomes.values()), "connections": self.connections})
        return plain._response("200 OK", b"application/json", body)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection: requests parsed by h2, answered with prebuilt bytes."""

    def __init__(self, upstream: TlsUpstream) -> None:
        self.upstream = upstream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[bytes, list[bytes]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            print(f"closing a connection on an HTTP/2 protocol error: {exc!r}", file=sys.stderr, flush=True)
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = (dict(event.headers).get(b":path", b""), [])
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id][1].append(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.answer(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
        self.flush()

    def answer(self, stream_id: int) -> None:
        path, body = self.requests.pop(stream_id)
        if path == plain.STATS_PATH:
            self.send(stream_id, JSON_HEAD, [self.stats_body()])
            return
        if path != plain.CHAT_PATH:
            self.send(stream_id, NOT_FOUND_HEAD, [])
            return
        self.upstream.outcomes["ok"] += 1
        stream = plain._wants_stream(b"".join(body))
        head, parts = (STREAM_HEAD, answers.CHAT.events) if stream else (JSON_HEAD, [answers.CHAT.body])
        if self.upstream.delay:
            asyncio.get_running_loop().call_later(self.upstream.delay, self.send, stream_id, head, parts)
        else:
            self.send(stream_id, head, parts)

    def stats_body(self) -> bytes:
        return self.upstream.stats().split(b"\r\n\r\n", 1)[1]

    def send(self, stream_id: int, head: list[tuple[bytes, bytes]], parts: list[bytes]) -> None:
        """Headers, then each part as its own write, as a model streams its events."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.h2.send_headers(stream_id, head, end_stream=not parts)
            for index, part in enumerate(parts):
                self.h2.send_data(stream_id, part, end_stream=index == len(parts) - 1)
                self.flush()
        except h2.exceptions.ProtocolError:
            pass  # the client reset this stream meanwhile (h2 may have forgotten it already)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


class Negotiated(asyncio.Protocol):
    """Hands a TLS connection to the HTTP/2 or the HTTP/1.1 protocol, as ALPN chose."""

    def __init__(self, upstream: TlsUpstream) -> None:
        self.upstream = upstream
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = transport.get_extra_info("ssl_object").selected_alpn_protocol()
        if protocol:  # both Sluice clients offer ALPN; the stats reader below does not, and is not counted
            self.upstream.connections[protocol] += 1
        self.inner = H2Connection(self.upstream) if protocol == "h2" else plain.Connection(self.upstream)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)


async def serve_upstream(port: int, delay_ms: float, tls: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
    context.set_alpn_protocols(["h2", "http/1.1"])
    upstream = TlsUpstream(delay_ms / 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Negotiated(upstream), "127.0.0.1", port, ssl=context, backlog=1024)
    async with server:
        await server.serve_forever()


# -- certificates ----------------------------------------------------------------


def make_certificates(directory: Path) -> Path:
    """A throwaway CA and a certificate it signed for 127.0.0.1, with the openssl CLI; returns the CA file."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "leaf.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    commands = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Sluice bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext"],
    ]
    for command in commands:
        subprocess.run(["openssl", *command], cwd=directory, check=True, capture_output=True)
    return directory / "ca.pem"


# -- the measurement -------------------------------------------------------------


def tls_upstream(label: str, port: int, delay_ms: int) -> Process:
    argv = [sys.executable, __file__, "--serve-upstream", "--port", str(port), "--delay-ms", str(delay_ms)]
    argv += ["--tls", str(TLS_DIR)]
    return Process(f"upstream-tls-{label}", argv, services.LOAD_CORE, tcp_open(port))


def connections(port: int, ca: Path) -> Counter[str]:
    """The TLS connections the upstream has accepted so far, per ALPN protocol."""
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{plain.STATS_PATH.decode()}", context=context) as reply:
        return Counter(orjson.loads(reply.read())["connections"])


def run_delay(bench: Bench, delay_ms: int, ca: Path) -> dict[str, dict[str, tuple[Cell, str]]]:
    """Each workload with this upstream delay, against both Sluice configurations, interleaved."""
    workloads = [workload for workload in WORKLOADS if workload.delay_ms == delay_ms]
    results: dict[str, dict[str, tuple[Cell, str]]] = {}
    with ExitStack() as stack:
        port = free_port()
        stack.enter_context(tls_upstream(f"{delay_ms}ms", port, delay_ms))
        urls: dict[str, str | None] = {}
        for target, http2 in TARGETS.items():
            config = services.sluice_config(port)
            openai = config["providers"][0] | {"base_url": f"https://127.0.0.1:{port}/v1", "http2": http2}
            config["providers"] = [openai]
            urls[target] = bench.start_sluice(stack, f"http2-{str(http2).lower()}-{delay_ms}ms", config)
        for workload in workloads:
            print(workload.title, file=sys.stderr)
            rounds: dict[str, list[Cell]] = {target: [] for target in TARGETS}
            opened: dict[str, Counter[str]] = {target: Counter() for target in TARGETS}
            for _ in range(bench.repeat):
                for target, url in urls.items():
                    if url is None:
                        continue
                    before = connections(port, ca)
                    request = Request(stream=workload.stream)
                    rounds[target].append(bench.measure(target, url, workload.connections, request))
                    opened[target] += connections(port, ca) - before
            results[workload.key] = {
                target: (median(cells) if cells else "Sluice did not start", _describe(opened[target]))
                for target, cells in rounds.items()
            }
    return results


def _describe(opened: Counter[str]) -> str:
    """New upstream connections over all rounds (checks, warm-ups and runs), by protocol."""
    if not opened:
        return "0 (reused)"
    return ", ".join(f"{count} {protocol}" for protocol, count in sorted(opened.items()))


def render(results: dict[str, dict[str, tuple[Cell, str]]], notes: list[str], problems: list[str]) -> str:
    lines = ["## Latest run", "", *[f"- {note}" for note in notes]]
    if problems:
        lines += ["", "Problems:", "", *[f"- {problem.splitlines()[0]}" for problem in problems]]
    for workload in WORKLOADS:
        rows = results.get(workload.key, {})
        lines += ["", f"### {workload.title}", ""]
        lines += ["| Sluice with | req/s | p50 ms | p99 ms | vs HTTP/1.1 req/s | upstream connections opened, all rounds | errors |"]
        lines += ["|---|---:|---:|---:|---:|---:|---:|"]
        baseline = rows.get(next(iter(TARGETS)), ("", ""))[0]
        for target, (cell, opened) in rows.items():
            if not isinstance(cell, WrkResult):
                lines.append(f"| {target} | not measured: {cell.splitlines()[0]} | | | | | |")
                continue
            share = f"{cell.rps / baseline.rps:.0%}" if isinstance(baseline, WrkResult) else "—"
            lines.append(
                f"| {target} | {cell.rps:,.0f} | {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | {share} | {opened} | {cell.errors} |"
            )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the median is reported")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for a quiet machine")
    parser.add_argument("--quick", action="store_true", help="2 s per measurement, no quiet wait, prints only")
    parser.add_argument("--print-only", action="store_true", help="do not write bench/HTTP2.md")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=9443, help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--tls", type=Path, default=TLS_DIR, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve_upstream:
        uvloop.run(serve_upstream(args.port, args.delay_ms, args.tls))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers started below are stopped
    ca = make_certificates(TLS_DIR)
    os.environ["SSL_CERT_FILE"] = str(ca)  # inherited by the Sluice processes
    bench = Bench(2, 1, 1, 0) if args.quick else Bench(args.duration, args.warmup, args.repeat, args.quiet_wait)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, dict[str, tuple[Cell, str]]] = {}
    try:
        for delay_ms in sorted({workload.delay_ms for workload in WORKLOADS}, reverse=True):
            results |= run_delay(bench, delay_ms, ca)
    except StartError as exc:
        sys.exit(f"the benchmark's own servers did not start: {exc}")
    notes = [
        f"{started}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
        f"{bench.seconds} s per measurement after a {bench.warmup} s warm-up; wrk -t1; "
        f"median of {bench.repeat} interleaved round(s)",
        f"CPUs busy as measurements started: max {max(bench.busy_starts, default=0):.0%}",
    ]
    section = render(results, notes, bench.problems)
    print(section)
    if not (args.quick or args.print_only):
        write_section(REPORT, section, owner="bench/http2.py")
        print(f"written to {REPORT}", file=sys.stderr)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
