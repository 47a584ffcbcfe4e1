"""Load generation with wrk, and what comes before it: a checked request and a quiet machine.

wrk is pinned to the load core with one thread (`-t1 -c N`); bench/post.lua
makes it POST a fixed body and print its figures as one `WRK_RESULT {json}`
line, read here from its latency histogram rather than its rounded summary.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from procs import OUT
from services import LOAD_CORE

LUA = Path(__file__).resolve().parent / "post.lua"
CHAT_PATH = "/v1/chat/completions"


class LoadError(Exception):
    """A target answered wrongly, or wrk failed: the figures would mean nothing."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def chat_body(stream: bool) -> bytes:
    """A realistic small chat request, the same bytes for every request of a run."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise assistant for a water-management company."},
            {
                "role": "user",
                "content": "In one sentence: what does a sluice gate do, and why would a canal need several?",
            },
        ],
        "temperature": 0.2,
        "max_tokens": 200,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(body)


def body_file(stream: bool) -> Path:
    path = OUT / ("body-stream.json" if stream else "body.json")
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chat_body(stream))
    return path


def wrk(url: str, connections: int, seconds: int, stream: bool, headers: dict[str, str] | None = None) -> WrkResult:
    argv = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["--timeout", "10s", "-s", str(LUA), url + CHAT_PATH, "--", str(body_file(stream))]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((line for line in run.stdout.splitlines() if line.startswith("WRK_RESULT ")), None)
    if run.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    errors = sum(
        raw[key] for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        raw["requests"], raw["duration_us"] / 1e6, raw["p50_us"] / 1000, raw["p99_us"] / 1000, errors
    )


def check_answer(url: str, stream: bool, headers: dict[str, str] | None = None) -> dict[str, str]:
    """One request first: a target that answers errors fast would otherwise look fast.

    Returns the response headers (lower-cased), so callers can check Sluice's own."""
    request = urllib.request.Request(
        url + CHAT_PATH,
        data=chat_body(stream),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body, headers = response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        raise LoadError(f"POST {CHAT_PATH} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise LoadError(f"POST {CHAT_PATH} failed: {exc!r}") from exc
    if stream:
        if not body.rstrip().endswith(b"data: [DONE]") or b'"chat.completion.chunk"' not in body:
            raise LoadError(f"stream is not chat.completion.chunk events ending in [DONE]: {body[:300]!r}")
    elif _object_type(body) != "chat.completion":
        raise LoadError(f"answer is not a chat.completion: {body[:300]!r}")
    return headers


def _object_type(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed.get("object") if isinstance(parsed, dict) else None


def wait_for_quiet(threshold: float, limit: float) -> float:
    """Wait up to `limit` seconds until other work uses under `threshold` of the CPUs.

    The machine is shared (test suites, builds); a measurement that starts
    while something else is busy measures that too. Between measurements our
    own servers are idle, so what shows here is someone else's. Returns the
    last busy share seen."""
    deadline = time.monotonic() + limit
    while (busy := _busy_share(1.0)) > threshold and time.monotonic() < deadline:
        pass
    return busy


def _busy_share(window: float) -> float:
    """Share of all CPUs busy (hypervisor steal included) over `window` seconds."""
    before = _cpu_ticks()
    time.sleep(window)
    after = _cpu_ticks()
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else 0.0


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs from /proc/stat: user..steal; idle and iowait are not busy."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)
