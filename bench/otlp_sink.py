"""A tiny OTLP/HTTP trace collector for the tracing workload: it takes every export and counts its spans.

    POST /v1/traces   an ExportTraceServiceRequest (protobuf, gzip allowed), decoded
                      with opentelemetry-proto, answered 200 like a collector
    GET  /__stats     {"spans": N, "exports": M}: what it has received so far

It runs on the load core beside wrk and the fake upstream; exports come in
batches (up to 512 spans each), so it handles a few dozen requests a second.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACES_PATH = "/v1/traces"
STATS_PATH = "/__stats"


class Counts:
    """Spans and exports received, shared by the handler threads."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self._lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with self._lock:
            self.spans += spans
            self.exports += 1


def handler(counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps the exporter's connection open, as a collector does

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != TRACES_PATH:
                self._answer(404, b"")
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            counts.add(ExportTraceServiceRequest.FromString(body))
            self._answer(200, b"", "application/x-protobuf")  # an empty ExportTraceServiceResponse

        def do_GET(self) -> None:  # noqa: N802
            if self.path != STATS_PATH:
                self._answer(404, b"")
                return
            self._answer(200, orjson.dumps({"spans": counts.spans, "exports": counts.exports}), "application/json")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), handler(Counts())).serve_forever()


if __name__ == "__main__":
    main()
