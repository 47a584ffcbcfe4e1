"""The one-command benchmark: fake upstream direct, the passthrough floor, and Sluice.

    .venv/bin/python bench/run.py            # ~10 s per measurement, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # ~2 s per measurement, prints only
    .venv/bin/python bench/run.py --repeat 3 # median of 3 interleaved rounds
    .venv/bin/python bench/run.py --only cache c16   # some workloads, prints only
    .venv/bin/python bench/run.py --only c16 responses messages   # the client APIs' targets

Each client API is loaded: Chat Completions, and Responses and Messages both
served natively and through Chat Completions (bridged, translated), all
through one Sluice process whose providers all point at the one fake upstream.
Chat Completions at c=16 is also measured through a second Sluice with tracing
on, exporting its spans over OTLP/HTTP to bench/otlp_sink.py.

The proxy under test runs alone on core 0; the fake upstream (and redis) share
core 1 with wrk. For each workload the three targets are measured back to back
in the same run, so they see the same machine. Every target first answers one
checked request, then gets a discarded warm-up, then the measured run. The
targets that compare two measurements (Sluice against the floor, tracing on
against off, each client API against Chat Completions) are judged on the same
pair measured again in alternating 2-s slices each round (``PAIRS``), so that
the machine's drift between two runs does not decide them.

Exits 1 when something could not be measured (e.g. Sluice does not start);
missed performance targets show as ❌ in the report but do not fail the run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import services
from loadgen import CHAT, MESSAGES, RESPONSES, Api, LoadError, Request, check_answer, wait_for_quiet, wrk
from procs import StartError, free_port
from report import TRACED, Cell, Table, render, write_section

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


ALL_TARGETS = ("direct", "floor", "sluice")


@dataclass(frozen=True, slots=True)
class Workload:
    """One table of the report: a request sent at a concurrency to each of `targets`.

    Requests that Sluice bridges or translates go upstream as another API, so
    only Sluice is measured for them: the direct and floor figures of that
    API are its own workloads'."""

    key: str
    title: str
    connections: int
    request: Request = Request()
    delay_ms: int = 0
    targets: tuple[str, ...] = ALL_TARGETS


def client_api(api: Api, native: str, other: str, other_model: str) -> list[Workload]:
    """A client API's four workloads at c=16: served natively (by the provider routed for
    `native`) and through Chat Completions (`other`: bridged or translated), JSON and streamed."""
    routes = [("native", native, ALL_TARGETS), (other, other_model, ("sluice",))]
    return [
        Workload(
            f"{api.name}-{route}{'-stream' if stream else ''}",
            f"{api.title}, {route} (`{model}`), {'streaming' if stream else 'non-streaming'}, c=16",
            16,
            Request(api, model, stream),
            targets=targets,
        )
        for route, model, targets in routes
        for stream in (False, True)
    ]


WORKLOADS = [
    Workload("c1", "Non-streaming, c=1", 1),
    Workload("c16", "Non-streaming, c=16", 16, targets=(*ALL_TARGETS, TRACED)),
    Workload("c64", "Non-streaming, c=64", 64),
    Workload("stream16", "Streaming (20 chunks + usage), c=16", 16, Request(stream=True)),
    Workload("delay50", "Non-streaming, 50 ms upstream delay, c=64", 64, delay_ms=50),
    # models route by services.sluice_config's providers
    *client_api(RESPONSES, "gpt-4o-mini", "bridged", "openai-chat/gpt-4o-mini"),
    *client_api(MESSAGES, "anthropic/claude-sonnet-4-5", "translated", "gpt-4o-mini"),
]
GROUPS = {api.name: [w.key for w in WORKLOADS if w.request.api is api] for api in (CHAT, RESPONSES, MESSAGES)}
"""`--only chat`, `--only responses`, `--only messages`: every workload of that client API."""


@dataclass(frozen=True, slots=True)
class Pair:
    """A target judged on the ratio of two measurements (report.checks), each a (workload, target).

    Measured back to back, 10 s apart, they see the machine at two speeds (it
    swings 10-40% within minutes): so each round also measures the pair in
    alternating slices (``SLICES``), over which a steady drift cancels."""

    base: tuple[str, str]
    other: tuple[str, str]


PAIRS = (
    Pair(("c16", "floor"), ("c16", "sluice")),
    Pair(("delay50", "floor"), ("delay50", "sluice")),
    Pair(("c16", "sluice"), ("c16", TRACED)),
    Pair(("c16", "sluice"), ("responses-native", "sluice")),
    Pair(("c16", "sluice"), ("messages-native", "sluice")),
)
SLICES = "ABBAABBA"
"""One round of a pair: A the base, B the other; each half mirrors the other."""
SLICE_SECONDS = 2

CACHE_CONNECTIONS = 16
QUIET = 0.15
"""Other work may use this share of the CPUs when a measurement starts."""


class Bench:
    """Measures targets with a fixed duration and warm-up, collecting what failed."""

    def __init__(self, seconds: int, warmup: int, repeat: int, quiet_wait: float) -> None:
        self.seconds = seconds
        self.warmup = warmup
        self.repeat = repeat
        self.quiet_wait = quiet_wait
        self.problems: list[str] = []
        self.busy_starts: list[float] = []

    def measure(
        self, label: str, url: str, connections: int, request: Request, headers: dict[str, str] | None = None
    ) -> Cell:
        busy = wait_for_quiet(QUIET, self.quiet_wait)
        self.busy_starts.append(busy)
        try:
            check_answer(url, request, headers)
            wrk(url, connections, self.warmup, request, headers)
            result = wrk(url, connections, self.seconds, request, headers)
        except LoadError as exc:
            return self.fail(label, str(exc))
        print(
            f"  {label:<34} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  (CPUs busy before: {busy:.0%})",
            file=sys.stderr,
            flush=True,
        )
        if result.errors:
            self.problems.append(
                f"{label}: {result.errors} failed requests (non-2xx, socket errors or timeouts) "
                "during the run; its figures count them"
            )
        return result

    def interleave(self, pair: Pair, base: tuple[str, Request], other: tuple[str, Request], connections: int) -> float | None:
        """``other``'s req/s over ``base``'s, from wrk runs of ``SLICE_SECONDS`` in the order of ``SLICES``."""
        label = f"{pair.other[1]}, {pair.other[0]} / {pair.base[1]}, {pair.base[0]}, interleaved"
        self.busy_starts.append(wait_for_quiet(QUIET, self.quiet_wait))
        totals = {"A": [0, 0.0], "B": [0, 0.0]}
        try:
            for side in SLICES:
                url, request = base if side == "A" else other
                result = wrk(url, connections, min(SLICE_SECONDS, self.seconds), request)
                totals[side][0] += result.requests
                totals[side][1] += result.seconds
        except LoadError as exc:
            self.fail(label, str(exc))
            return None
        (base_requests, base_seconds), (other_requests, other_seconds) = totals["A"], totals["B"]
        ratio = (other_requests / other_seconds) / (base_requests / base_seconds)
        print(f"  {label:<60} {ratio:6.1%}", file=sys.stderr, flush=True)
        return ratio

    def fail(self, label: str, reason: str) -> str:
        self.problems.append(f"{label}: {reason}")
        print(f"  {label:<34} NOT MEASURED: {reason}", file=sys.stderr, flush=True)
        return reason

    def start_sluice(
        self, stack: ExitStack, label: str, config: dict[str, Any], env: dict[str, str] | None = None
    ) -> str | None:
        """Sluice's base URL, or None (recorded as a problem) when it does not come up."""
        port = free_port()
        try:
            stack.enter_context(services.sluice(label, port, config, env))
        except StartError as exc:
            self.fail(f"sluice ({label})", f"Sluice did not start: {exc}")
            return None
        return services.base_url(port)


def run_workloads(bench: Bench, delay_ms: int, workloads: list[Workload]) -> list[Table]:
    """Direct, floor and Sluice against one fake upstream with the given delay.

    Each round measures every workload, so rounds interleave across workloads
    too: the targets that compare two workloads (an API against Chat
    Completions) see the same bursts of other work."""
    with ExitStack() as stack:
        upstream_port, floor_port = free_port(), free_port()
        label = f"{delay_ms}ms"
        stack.enter_context(services.upstream(label, upstream_port, delay_ms))
        stack.enter_context(services.floor(label, floor_port, upstream_port))
        targets = {
            "direct": services.base_url(upstream_port),
            "floor": services.base_url(floor_port),
            "sluice": bench.start_sluice(stack, label, services.sluice_config(upstream_port)),
        }
        sink = None
        if any(TRACED in workload.targets for workload in workloads):
            sink_port = free_port()
            stack.enter_context(services.otlp_sink(label, sink_port))
            sink = services.base_url(sink_port)
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "sluice-bench"}
            targets[TRACED] = bench.start_sluice(stack, f"{label}-traced", services.sluice_config(upstream_port), env)
        rounds: dict[tuple[str, str], list[Cell]] = {(w.key, name): [] for w in workloads for name in w.targets}
        by_key = {workload.key: workload for workload in workloads}
        pairs = [p for p in PAIRS if p.base[0] in by_key and p.other[0] in by_key]
        interleaved: dict[tuple[str, str], list[float]] = {pair.other: [] for pair in pairs}
        for _ in range(bench.repeat):
            for workload in workloads:
                print(workload.title, file=sys.stderr)
                for name in workload.targets:
                    url, cells = targets[name], rounds[workload.key, name]
                    if url and not any(isinstance(cell, str) for cell in cells):
                        what = f"{name}, {workload.key}"
                        cells.append(bench.measure(what, url, workload.connections, workload.request))
            for pair in pairs:
                base, other = by_key[pair.base[0]], by_key[pair.other[0]]
                base_url, other_url = targets[pair.base[1]], targets[pair.other[1]]
                if base_url and other_url:
                    ratio = bench.interleave(pair, (base_url, base.request), (other_url, other.request), other.connections)
                    if ratio is not None:
                        interleaved[pair.other].append(ratio)
        traced = targets.get(TRACED)
        exported = _exported_spans(bench, TRACED, traced, sink) if sink and traced else None
    tables = [Table(workload.key, workload.title) for workload in workloads]
    for workload, table in zip(workloads, tables, strict=True):
        table.rows = {
            name: median(cells) if (cells := rounds[workload.key, name]) else "Sluice did not start"
            for name in workload.targets
        }
        if exported and TRACED in workload.targets:
            table.notes.append(exported)
        table.interleaved = {target: ratios for (key, target), ratios in interleaved.items() if key == workload.key and ratios}
    return tables


SPANS_PER_REQUEST = 2
"""A proxied request's spans: the request (SERVER) and its one upstream attempt (CLIENT)."""
EXPORT_WAIT = 8.0
"""Seconds to wait for the last batch: the exporter sends a partial one every 5 s (OTEL_BSP_SCHEDULE_DELAY)."""


def _exported_spans(bench: Bench, row: str, sluice: str, sink: str, per_request: int = SPANS_PER_REQUEST) -> str:
    """Proof that tracing was on: the spans the sink received against those the requests made
    (none is a problem: the tracing figure would be Sluice's without tracing)."""
    try:
        requests = _get_json(f"{sluice}/stats")["requests"]["total"]
        expected = requests * per_request
        deadline = time.monotonic() + EXPORT_WAIT
        received = _get_json(f"{sink}/__stats")
        while received["spans"] < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            received = _get_json(f"{sink}/__stats")
    except (OSError, ValueError) as exc:
        return bench.fail(f"{row}, spans", f"could not count the exported spans ({exc})")
    if not received["spans"]:
        return bench.fail(f"{row}, spans", "the OTLP sink received no spans: tracing was not on")
    return (
        f"{row}: `OTEL_EXPORTER_OTLP_ENDPOINT` at bench/otlp_sink.py (an OTLP/HTTP collector on core 1), "
        f"default batch settings; it received {received['spans']:,} spans in {received['exports']:,} exports "
        f"for the {requests:,} requests this Sluice served ({received['spans'] / max(expected, 1):.0%} of "
        f"{per_request} per request; spans beyond `OTEL_BSP_MAX_QUEUE_SIZE` waiting are dropped)"
    )


def median(cells: list[Cell]) -> Cell:
    """The round with the median req/s (the lower one of an even count), or the first failure.

    Rounds of the targets and workloads are interleaved, so a burst of other
    work on the machine lands in one round of each rather than in all of one
    target's."""
    failures = [cell for cell in cells if isinstance(cell, str)]
    if failures:
        return failures[0]
    ranked = sorted(cells, key=lambda cell: cell.rps)
    return ranked[(len(ranked) - 1) // 2]


def run_cache(bench: Bench, backends: list[str]) -> Table:
    """Sluice answering one repeated request from its cache: the first misses, the rest hit."""
    table = Table("cache", f"Cache hits (Sluice only), non-streaming, c={CACHE_CONNECTIONS}")
    print(table.title, file=sys.stderr)
    with ExitStack() as stack:
        port = free_port()
        stack.enter_context(services.ceiling("cache", port))
        row = "ceiling: bare ASGI app, fixed answer"
        table.rows[row] = median(
            [bench.measure(row, services.base_url(port), CACHE_CONNECTIONS, Request()) for _ in range(bench.repeat)]
        )
    table.notes.append(
        "ceiling: bench/ceiling.py, no framework and no upstream, on uvicorn like Sluice; "
        "no answer through ASGI can come faster from one worker here (the hit lane answers below ASGI)"
    )
    for backend in backends:
        row = f"sluice, {backend} cache"
        with ExitStack() as stack:
            label, upstream_port = f"cache-{backend}", free_port()
            stack.enter_context(services.upstream(label, upstream_port))
            cache: dict[str, Any] = {"enabled": True, "backend": backend}
            if backend == "redis":
                redis_port = free_port()
                stack.enter_context(services.redis(label, redis_port))
                cache["redis_url"] = f"redis://127.0.0.1:{redis_port}/0"
            url = bench.start_sluice(stack, label, services.sluice_config(upstream_port, cache=cache))
            if url is None:
                table.rows[row] = "Sluice did not start"
                continue
            table.rows[row] = _measure_hits(bench, row, url)
            table.rows[f"{row}, full path"] = _measure_hits(bench, f"{row}, full path", url, OFF_LANE)
            table.notes.append(f"{row}: {_cache_stats(url)}")
    row = "sluice, memory cache, tracing on"
    with ExitStack() as stack:  # hits traced: each a span of its own (no upstream attempt), the lane's too
        label, upstream_port, sink_port = "cache-traced", free_port(), free_port()
        stack.enter_context(services.upstream(label, upstream_port))
        stack.enter_context(services.otlp_sink(label, sink_port))
        sink = services.base_url(sink_port)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "sluice-bench"}
        config = services.sluice_config(upstream_port, cache={"enabled": True, "backend": "memory"})
        url = bench.start_sluice(stack, label, config, env)
        if url is None:
            table.rows[row] = "Sluice did not start"
        else:
            table.rows[row] = _measure_hits(bench, row, url)
            table.notes.append(f"{row}: {_cache_stats(url)}")
            table.notes.append(_exported_spans(bench, row, url, sink, per_request=1))
    table.notes.append(
        "full path: the same hits sent with `X-Sluice-Cache-TTL`, which keeps them off the hit lane: "
        "what a hit costs when its bytes differ from the request that taught the lane"
    )
    return table


OFF_LANE = {"X-Sluice-Cache-TTL": "3600"}


def _measure_hits(bench: Bench, label: str, url: str, headers: dict[str, str] | None = None) -> Cell:
    try:
        check_answer(url, Request(), headers)
        second = check_answer(url, Request(), headers).get("x-sluice-cache")
    except LoadError as exc:
        return bench.fail(label, str(exc))
    if second != "hit":
        return bench.fail(label, f"a repeated request was not a cache hit (X-Sluice-Cache: {second})")
    return median([bench.measure(label, url, CACHE_CONNECTIONS, Request(), headers) for _ in range(bench.repeat)])


def _cache_stats(url: str) -> str:
    """Sluice's own count of hits and misses, to show the run really was served from cache."""
    try:
        cache = _get_json(f"{url}/stats").get("cache", {})
    except (OSError, ValueError) as exc:
        return f"/stats unavailable ({exc})"
    hits, misses, rate = cache.get("hits"), cache.get("misses"), cache.get("hit_rate")
    lane = f", of the hits {cache['lane_hits']:,} by the hit lane" if "lane_hits" in cache else ""
    return f"Sluice's /stats: cache hits {hits:,}, misses {misses}, hit rate {rate}{lane}"


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


def context(bench: Bench, load_before: float) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} × {cpu}; "
        f"Python {platform.python_version()}",
        f"{bench.seconds} s per measurement after a {bench.warmup} s warm-up; wrk -t1; "
        f"median of {bench.repeat} interleaved round(s)",
        f"other work on the machine: load average {load_before:.2f} before the run, "
        f"{os.getloadavg()[0]:.2f} after; {busy_note(bench)}",
    ]


def busy_note(bench: Bench) -> str:
    """How quiet the machine was as each measurement started (what the quiet wait achieved)."""
    busy = sorted(bench.busy_starts)
    if not busy:
        return "no measurement was made"
    noisy = sum(share > QUIET for share in busy)
    return (
        f"CPUs busy as measurements started: median {busy[len(busy) // 2]:.0%}, max {busy[-1]:.0%}; "
        f"{noisy} of {len(busy)} started above {QUIET:.0%} after waiting up to {bench.quiet_wait:.0f} s"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved rounds per measurement; the median is reported"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 s per measurement, 1 s warm-up, no quiet wait, prints only",
    )
    parser.add_argument(
        "--redis", action="store_true", help="require the redis cache run (default: when redis-server exists)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help=f"seconds to wait for other work to drop under {QUIET:.0%}% CPU before each measurement",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[w.key for w in WORKLOADS] + list(GROUPS) + ["cache"],
        help="measure only these workloads, or every workload of a client API: chat, responses, "
        "messages (implies --print-only; a target check needs both its workloads, e.g. c16 responses)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="report file (default bench/RESULTS.md)")
    parser.add_argument(
        "--print-only", action="store_true", help="do not write the report file (implied by --quick)"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install wrk util-linux)")
    if args.redis and shutil.which("redis-server") is None:
        sys.exit("--redis given but redis-server is not installed")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    load_before = os.getloadavg()[0]
    if args.quick:
        bench = Bench(seconds=2, warmup=1, repeat=1, quiet_wait=0)
    else:
        bench = Bench(args.duration, args.warmup, args.repeat, args.quiet_wait)
    tables: list[Table] = []
    backends = ["memory"] + (["redis"] if args.redis or shutil.which("redis-server") else [])
    chosen = {key for name in args.only or [*GROUPS, "cache"] for key in GROUPS.get(name, [name])}
    workloads = [w for w in WORKLOADS if w.key in chosen]
    try:
        for delay_ms in sorted({workload.delay_ms for workload in workloads}):
            tables += run_workloads(bench, delay_ms, [w for w in workloads if w.delay_ms == delay_ms])
        if "cache" in chosen:
            tables.append(run_cache(bench, backends))
    except StartError as exc:
        sys.exit(f"the benchmark's own servers did not start: {exc}")

    section = render(tables, context(bench, load_before), bench.problems)
    print(section)
    if not (args.print_only or args.quick or args.only):
        write_section(args.output, section, owner="bench/run.py")
        print(f"written to {args.output}", file=sys.stderr)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
