"""CPU time per request of Sluice with tracing off and on, from the kernel's own accounting.

    .venv/bin/python bench/cpu_cost.py                 # 5 interleaved rounds of 3 s
    .venv/bin/python bench/cpu_cost.py --rounds 7 --seconds 4

req/s at c=16 moves with whatever else the machine does; the CPU time the
proxy's process spent (user + system, its threads included, from
/proc/<pid>/stat) divided by the requests it answered moves far less, so a
change of a few µs a request shows. Both Sluices (same config as
`make bench`, one with `OTEL_EXPORTER_OTLP_ENDPOINT` at bench/otlp_sink.py)
run on core 0, the fake upstream, the sink and wrk on core 1, as in
bench/run.py; the rounds alternate between them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

import services
from loadgen import Request, check_answer, wrk
from procs import free_port

TICK = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * TICK  # utime, stime (fields 14 and 15)


Targets = dict[str, tuple[str, int]]
"""A name → the base URL and process id of each proxy measured."""


def cpu_rounds(
    targets: Targets, request: Request, rounds: int, seconds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each target checked and warmed up, then ``rounds`` interleaved wrk runs at c=16: per target
    and round, req/s and the process's CPU µs a request (also printed as they come)."""
    for url, _ in targets.values():
        check_answer(url, request)
        wrk(url, 16, 2, request)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in targets}
    costs: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, pid) in targets.items():
            before = cpu_seconds(pid)
            result = wrk(url, 16, seconds, request)
            costs[name].append((cpu_seconds(pid) - before) / result.requests * 1e6)
            rates[name].append(result.rps)
            print(f"  {name:<16} {result.rps:8,.0f} req/s  {costs[name][-1]:6.1f} µs/request", file=sys.stderr)
    return rates, costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    request = Request()
    with ExitStack() as stack:
        upstream_port, sink_port = free_port(), free_port()
        stack.enter_context(services.upstream("cpu", upstream_port))
        stack.enter_context(services.otlp_sink("cpu", sink_port))
        config = services.sluice_config(upstream_port)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": services.base_url(sink_port), "OTEL_SERVICE_NAME": "sluice-bench"}
        targets: Targets = {}
        for label, extra in (("tracing off", None), ("tracing on", env)):
            port = free_port()
            process = stack.enter_context(services.sluice(f"cpu-{label.split()[1]}", port, config, extra))
            targets[label] = (services.base_url(port), process.pid)
        rates, per_request = cpu_rounds(targets, request, args.rounds, args.seconds)
    off = statistics.median(per_request["tracing off"])
    for label in targets:
        cost = statistics.median(per_request[label])
        extra = f"  (+{cost - off:.1f} µs)" if label != "tracing off" else ""
        print(f"{label:<12} {cost:6.1f} µs/request{extra}  median {statistics.median(rates[label]):8,.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
