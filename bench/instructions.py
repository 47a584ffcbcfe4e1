"""Instructions per request of Sluice with tracing off and on, counted by callgrind.

    .venv/bin/python bench/instructions.py               # 3,200 chat requests at c=16 each
    .venv/bin/python bench/instructions.py --requests 6400

req/s, and even CPU time per request (bench/cpu_cost.py), move by 10-40% from
one run to the next on a shared virtual machine; instructions counted by
valgrind's callgrind do not (two runs agree within ~3%). Each Sluice runs
under callgrind with counting off until it has served a warm-up and a batch
of spans has been exported; then exactly `--requests` non-streaming chat
requests are sent at c=16 and counted, per thread: the request path (the
main thread) and the span export thread. Instructions are not time (cache
misses and the kernel are not in them) but a change that removes work shows
here, whatever the machine's neighbours do. Needs valgrind
(`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

import services
from loadgen import Request
from procs import OUT, free_port

CONCURRENCY = 16
WARMUP = 480


def send(port: int, count: int, body: bytes) -> None:
    """`count` chat requests over CONCURRENCY kept-alive connections; each must succeed."""

    def worker(requests: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for _ in range(requests):
            connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    workers = [threading.Thread(target=worker, args=(count // CONCURRENCY,)) for _ in range(CONCURRENCY)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def counted(
    label: str, upstream_port: int, env: dict[str, str], requests: int, body: bytes, keep: Path | None = None
) -> list[int]:
    """Instructions of each thread that ran while `requests` were served, main thread first; with
    `keep`, callgrind's files are copied there (for callgrind_annotate)."""
    port = free_port()
    config = OUT / f"instructions-{label}.yaml"
    config.write_text(yaml.safe_dump(services.sluice_config(upstream_port), sort_keys=False))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        argv = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes", f"--callgrind-out-file={out}",
            sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port), "--workers", "1",
        ]
        with (OUT / f"instructions-{label}.log").open("wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(port, process)
            send(port, WARMUP, body)
            time.sleep(6)  # the warm-up's spans go out (OTEL_BSP_SCHEDULE_DELAY), uncounted
            control = ["callgrind_control"]
            subprocess.run([*control, "-i", "on", str(process.pid)], check=True, capture_output=True)
            send(port, requests, body)
            time.sleep(7)  # their last spans go out too: a batch's encoding lags behind the requests it holds
            subprocess.run([*control, "-i", "off", str(process.pid)], check=True, capture_output=True)
            subprocess.run([*control, "-d", str(process.pid)], check=True, capture_output=True)
        finally:
            process.terminate()
            process.wait(120)
        totals = []
        for dump in sorted(Path(folder).glob("callgrind.out.1-*")):
            if keep is not None:
                shutil.copy(dump, keep / f"{label}.{dump.name}")
            match = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
            if match and int(match.group(1)) >= 100 * requests:  # threads that ran, not one that merely woke
                totals.append(int(match.group(1)))
        return totals


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300  # Python under valgrind starts slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Sluice exited under valgrind (see {OUT}/instructions-*.log)")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("Sluice did not become ready under valgrind")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--keep", type=Path, help="a folder to keep callgrind's files in, per thread")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 1
    body = Request().body()
    results: dict[str, list[int]] = {}
    with ExitStack() as stack:
        upstream_port, sink_port = free_port(), free_port()
        stack.enter_context(services.upstream("instructions", upstream_port))
        stack.enter_context(services.otlp_sink("instructions", sink_port))
        traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": services.base_url(sink_port), "OTEL_SERVICE_NAME": "sluice-bench"}
        for label, extra in (("tracing off", {}), ("tracing on", traced)):
            results[label] = counted(label.replace(" ", "-"), upstream_port, {**os.environ, **extra}, args.requests, body, args.keep)
    off = sum(results["tracing off"]) / args.requests
    for label, totals in results.items():
        per_thread = " + ".join(f"{total / args.requests:,.0f}" for total in totals)
        total = sum(totals) / args.requests
        extra = f"  (+{total - off:,.0f}, {total / off - 1:+.1%})" if label != "tracing off" else ""
        print(f"{label:<12} {total:,.0f} instructions/request = {per_thread} (by thread){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
