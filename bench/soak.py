"""Soak test: many requests through Sluice to an upstream that keeps failing.

    .venv/bin/python bench/soak.py                # 10,000 requests, concurrency 64, 20% chaos
    .venv/bin/python bench/soak.py --prompts 50   # the same with cache and dedup on, 50 prompts
    .venv/bin/python bench/soak.py --prompts 50 --backend redis

The fake upstream fails 20% of calls at random (429, 500, 503, connection
resets, slow answers; seeded), Sluice retries (3 attempts, 10-200 ms backoff)
with its breaker set too high to open, and cache and dedup are off; every body
is unique, so every request is a real upstream call. With ``--prompts N``,
cache and dedup are on and the bodies are N prompts over and over, so misses,
joined flights, full-path hits and hit-lane hits mix under the same chaos.
Checks, each printed:

- every request ends in a correct chat.completion or a well-formed OpenAI error;
- none hangs (each has a timeout; the count is bounded);
- at least 99% succeed;
- the upstream saw at most 3 calls per request (retries are bounded);
- Sluice's RSS and open sockets are flat from the first to the last thousand
  requests: RSS within +10%, sockets within ±20.

Exits 1 when a check fails, 2 when Sluice (or the fake upstream) does not start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

import services
from procs import StartError, free_port
from report import write_section

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SAMPLE_EVERY = 1000
RSS_GROWTH = 0.10
SOCKET_DRIFT = 20
MIN_SUCCESS = 0.99
MAX_ATTEMPTS = 3
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass(frozen=True, slots=True)
class Sample:
    """Sluice's footprint after `done` requests have completed."""

    done: int
    rss_kb: int
    fds: int
    sockets: int


@dataclass
class Tally:
    """What happened to the requests, as the load loop sees it."""

    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())


def footprint(pid: int, done: int) -> Sample:
    """RSS from /proc/<pid>/status, and its descriptors, sockets counted apart."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return Sample(done, rss_kb, len(targets), sum(target.startswith("socket:") for target in targets))


def body(index: int, prompts: int) -> bytes:
    """A unique request (neither cache nor dedup could answer it), or one of ``prompts`` when > 0."""
    tag = index % prompts if prompts else uuid.uuid4().hex
    question = f"Request {tag}: summarise the water level report in one line."
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]})


def classify(status: int, payload: bytes) -> str:
    """'ok' for a correct chat.completion, 'error' for a well-formed OpenAI error, else 'malformed'."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "malformed"
    if not isinstance(data, dict):
        return "malformed"
    if status == 200:
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return "malformed"
        valid = data.get("object") == "chat.completion" and isinstance(content, str)
        return "ok" if valid and isinstance(data.get("usage"), dict) else "malformed"
    error = data.get("error")
    return "error" if isinstance(error, dict) and error.keys() >= ERROR_FIELDS else "malformed"


async def load(url: str, pid: int, requests: int, concurrency: int, timeout: float, prompts: int) -> Tally:
    """`requests` POSTs from `concurrency` workers, sampling Sluice every thousand."""
    tally = Tally()
    indices = iter(range(requests))
    session_timeout = aiohttp.ClientTimeout(total=timeout)

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        try:
            async with session.post(
                url, data=body(index, prompts), headers={"Content-Type": "application/json"}
            ) as response:
                payload = await response.read()
                outcome = classify(response.status, payload)
                tally.statuses[response.status] += 1
                tally.attempts[response.headers.get("X-Sluice-Attempts", "?")] += 1
                joined = "+joined" if response.headers.get("X-Sluice-Dedup") else ""
                tally.cache[response.headers.get("X-Sluice-Cache", "?") + joined] += 1
        except TimeoutError:
            outcome, payload = "hung", b""
        except aiohttp.ClientError as exc:
            outcome, payload = "broken", repr(exc).encode()
        tally.outcomes[outcome] += 1
        if outcome not in ("ok", "error"):
            tally.examples.setdefault(outcome, payload[:300].decode(errors="replace"))
        if tally.done % SAMPLE_EVERY == 0:
            tally.samples.append(footprint(pid, tally.done))

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in indices:
            await one(session, index)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=session_timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return tally


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


def checks(tally: Tally, requests: int, upstream_calls: int) -> list[tuple[str, bool]]:
    first, last = tally.samples[0], tally.samples[-1]
    return [
        (
            "every request ended in a chat.completion or an OpenAI error JSON",
            tally.outcomes["malformed"] == tally.outcomes["broken"] == 0,
        ),
        ("no request hung", tally.outcomes["hung"] == 0),
        (
            f"≥ {MIN_SUCCESS:.0%} succeeded ({tally.outcomes['ok'] / requests:.2%})",
            tally.outcomes["ok"] >= MIN_SUCCESS * requests,
        ),
        (
            f"upstream calls ≤ {MAX_ATTEMPTS} × requests ({upstream_calls:,} ≤ {MAX_ATTEMPTS * requests:,})",
            upstream_calls <= MAX_ATTEMPTS * requests,
        ),
        (
            f"RSS flat: {first.rss_kb:,} kB → {last.rss_kb:,} kB (≤ +{RSS_GROWTH:.0%})",
            last.rss_kb <= first.rss_kb * (1 + RSS_GROWTH),
        ),
        (
            f"sockets flat: {first.sockets} → {last.sockets} (±{SOCKET_DRIFT})",
            abs(last.sockets - first.sockets) <= SOCKET_DRIFT,
        ),
    ]


def render(
    tally: Tally,
    upstream: dict,
    sluice_cache: dict,
    args: argparse.Namespace,
    seconds: float,
    results: list[tuple[str, bool]],
) -> str:
    """The soak's markdown section: what happened, the checks, Sluice's footprint over time."""
    lines = [
        "## Latest soak run",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.requests:,} requests at concurrency "
        f"{args.concurrency}, chaos {args.chaos} (seed {args.seed}), "
        f"{f'{args.prompts} prompts with cache ({args.backend}) and dedup on' if args.prompts else 'unique bodies'}, "
        f"in {seconds:.1f} s "
        f"({args.requests / seconds:,.0f} req/s)",
        f"- client outcomes: {_counts(tally.outcomes)}",
        f"- HTTP statuses: {_counts(tally.statuses)}",
        f"- X-Sluice-Attempts: {_counts(tally.attempts)}",
        f"- X-Sluice-Cache (+ X-Sluice-Dedup): {_counts(tally.cache)}; Sluice's /stats cache: {sluice_cache}",
        f"- upstream calls: {upstream['calls']:,} ({_counts(Counter(upstream['outcomes']))})",
        *[f"- first {outcome}: `{example}`" for outcome, example in tally.examples.items()],
        "",
        "### Checks",
        "",
        *[f"- {'✅' if passed else '❌'} {description}" for description, passed in results],
        "",
        "### Sluice's footprint",
        "",
        "| after requests | RSS kB | fds | sockets |",
        "|---:|---:|---:|---:|",
        *[f"| {s.done:,} | {s.rss_kb:,} | {s.fds} | {s.sockets} |" for s in tally.samples],
    ]
    return "\n".join(lines) + "\n"


def _counts(counter: Counter) -> str:
    return ", ".join(
        f"{key}: {count:,}" for key, count in sorted(counter.items(), key=lambda item: str(item[0]))
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--chaos", type=float, default=0.2, help="share of upstream calls that go wrong")
    parser.add_argument("--seed", type=int, default=7, help="seed of the upstream's chaos")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as hung")
    parser.add_argument(
        "--prompts", type=int, default=0, help="cache and dedup on, bodies from this many prompts (0: unique)"
    )
    parser.add_argument(
        "--backend", choices=("memory", "redis"), default="memory", help="the cache backend with --prompts"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="report file (default bench/RESULTS.md)")
    parser.add_argument("--print-only", action="store_true", help="do not write the report file")
    args = parser.parse_args()
    if args.requests < 2 * SAMPLE_EVERY:
        parser.error(f"--requests must be at least {2 * SAMPLE_EVERY} to compare first and last thousand")
    return args


def main() -> int:
    args = parse_args()
    os.sched_setaffinity(0, {services.LOAD_CORE})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    upstream_port, sluice_port = free_port(), free_port()
    sluice_config = services.sluice_config(
        upstream_port,
        retry={"max_attempts": MAX_ATTEMPTS, "initial_backoff_ms": 10, "max_backoff_ms": 200},
        breaker={"failure_threshold": 1000},
    )
    cache: dict = {"enabled": True, "backend": args.backend}
    if args.prompts:
        sluice_config.update(cache=cache, dedup={"enabled": True})
    try:
        with ExitStack() as stack:
            if args.prompts and args.backend == "redis":
                redis_port = free_port()
                stack.enter_context(services.redis("soak", redis_port))
                cache["redis_url"] = f"redis://127.0.0.1:{redis_port}/0"
            stack.enter_context(services.upstream("soak", upstream_port, chaos=args.chaos, seed=args.seed))
            sluice = stack.enter_context(services.sluice("soak", sluice_port, sluice_config))
            url = f"{services.base_url(sluice_port)}/v1/chat/completions"
            started = time.monotonic()
            tally = asyncio.run(load(url, sluice.pid, args.requests, args.concurrency, args.timeout, args.prompts))
            seconds = time.monotonic() - started
            upstream = asyncio.run(get_json(f"{services.base_url(upstream_port)}/__stats"))
            sluice_cache = asyncio.run(get_json(f"{services.base_url(sluice_port)}/stats"))["cache"]
    except StartError as exc:
        print(f"did not start: {exc}", file=sys.stderr)
        return 2

    results = checks(tally, args.requests, upstream["calls"])
    section = render(tally, upstream, sluice_cache, args, seconds, results)
    print(section)
    if not args.print_only:
        write_section(args.output, section, owner="bench/soak.py")
    return 0 if all(passed for _, passed in results) else 1


if __name__ == "__main__":
    sys.exit(main())
