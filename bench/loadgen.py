"""Load generation with wrk, and what comes before it: a checked request and a quiet machine.

A workload sends one `Request`: a client API (Chat Completions, Responses or
Messages), a model and whether to stream. wrk is pinned to the load core with
one thread (`-t1 -c N`); bench/post.lua makes it POST the request's fixed body
to the API's path and print its figures as one `WRK_RESULT {json}` line, read
here from its latency histogram rather than its rounded summary.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from procs import OUT
from services import LOAD_CORE

LUA = Path(__file__).resolve().parent / "post.lua"
SYSTEM = "You are a concise assistant for a water-management company."
QUESTION = "In one sentence: what does a sluice gate do, and why would a canal need several?"


class LoadError(Exception):
    """A target answered wrongly, or wrk failed: the figures would mean nothing."""


@dataclass(frozen=True, slots=True)
class Api:
    """A client API as the bench drives it: where requests go, what they say, what a right answer is.

    An answer's kind is its JSON's `type` or else `object`; a stream's events
    have kinds too (`[DONE]` for Chat Completions' last)."""

    name: str
    title: str
    path: str
    body: Callable[[str, bool], dict[str, Any]]
    answer: str
    stream_events: frozenset[str]
    stream_end: str


def _chat(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "temperature": 0.2,
        "max_tokens": 200,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def _responses(model: str, stream: bool) -> dict[str, Any]:
    body = {"model": model, "instructions": SYSTEM, "input": QUESTION, "temperature": 0.2, "max_output_tokens": 200}
    return (body | {"stream": True}) if stream else body


def _messages(model: str, stream: bool) -> dict[str, Any]:
    body = {
        "model": model,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0.2,
        "max_tokens": 200,
    }
    return (body | {"stream": True}) if stream else body


CHAT = Api(
    name="chat",
    title="Chat Completions",
    path="/v1/chat/completions",
    body=_chat,
    answer="chat.completion",
    stream_events=frozenset({"chat.completion.chunk"}),
    stream_end="[DONE]",
)
RESPONSES = Api(
    name="responses",
    title="Responses",
    path="/v1/responses",
    body=_responses,
    answer="response",
    stream_events=frozenset({"response.created", "response.output_text.delta"}),
    stream_end="response.completed",
)
MESSAGES = Api(
    name="messages",
    title="Messages",
    path="/v1/messages",
    body=_messages,
    answer="message",
    stream_events=frozenset({"message_start", "content_block_delta", "message_delta"}),
    stream_end="message_stop",
)


@dataclass(frozen=True, slots=True)
class Request:
    """What a workload sends, the same bytes every time: a realistic small request of one API."""

    api: Api = CHAT
    model: str = "gpt-4o-mini"
    stream: bool = False

    def body(self) -> bytes:
        return orjson.dumps(self.api.body(self.model, self.stream))

    def body_file(self) -> Path:
        """The body where wrk's script reads it, named by what it is."""
        name = f"body-{self.api.name}-{self.model.replace('/', '_')}{'-stream' if self.stream else ''}.json"
        path = OUT / name
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.body())
        return path


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


def wrk(
    url: str, connections: int, seconds: int, request: Request, headers: dict[str, str] | None = None
) -> WrkResult:
    argv = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["--timeout", "10s", "-s", str(LUA), url + request.api.path, "--", str(request.body_file())]
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


def check_answer(url: str, request: Request, headers: dict[str, str] | None = None) -> dict[str, str]:
    """One request first: a target that answers errors fast would otherwise look fast.

    Returns the response headers (lower-cased), so callers can check Sluice's own."""
    api = request.api
    post = urllib.request.Request(
        url + api.path,
        data=request.body(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(post, timeout=10) as response:
            body, headers = response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        raise LoadError(f"POST {api.path} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise LoadError(f"POST {api.path} failed: {exc!r}") from exc
    if request.stream:
        kinds = [_kind(data) for data in _sse_data(body)]
        if not kinds or kinds[-1] != api.stream_end or not api.stream_events <= set(kinds):
            raise LoadError(
                f"stream is not {', '.join(sorted(api.stream_events))} events ending in {api.stream_end}: "
                f"{body[:300]!r}"
            )
    elif _kind(body) != api.answer:
        raise LoadError(f"answer is not a {api.answer}: {body[:300]!r}")
    return headers


def _sse_data(body: bytes) -> list[bytes]:
    """The `data:` of each server-sent event; comments (keep-alives) and empty events are skipped."""
    events = (event.split(b"\n") for event in body.replace(b"\r\n", b"\n").split(b"\n\n"))
    return [
        b"\n".join(line.removeprefix(b"data:").removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        for lines in events
        if any(line.startswith(b"data:") for line in lines)
    ]


def _kind(data: bytes) -> str | None:
    """What an answer or event is: its JSON's `type`, else `object` (`[DONE]` as itself)."""
    if data == b"[DONE]":
        return "[DONE]"
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return (parsed.get("type") or parsed.get("object")) if isinstance(parsed, dict) else None


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
