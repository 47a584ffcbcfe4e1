"""Cache-stable trimming: how often the upstream prompt keeps its start as agent sessions
outgrow the context window, and what that does to the bill under OpenAI's prompt caching.

    .venv/bin/python bench/prefix_stability.py

Each ``bench/data/agent/*.json`` conversation becomes one long session: its
system prompt, then its task (user message, tool calls and results, answers)
repeated with fresh tool-call ids until the session passes 3× the window. The
client sends a request before each assistant message, with everything before
it, as agent loops do; Sluice trims each request to the window with no
requested output length (so ``min(4096, window / 4)`` is reserved), exactly as
``proxy.compression.trim_history`` runs in the pipeline. Two schemes:

- **old**: ``low_water=1``, the oldest turns go one by one until the prompt fits;
- **new**: ``low_water=LOW_WATER``, an overflowing prompt drops to that share of
  the budget and keeps its cut until the window fills again (see ``_cut``).

Reported, over the requests after trimming first happened: the share whose
upstream prompt starts with the previous request's whole prompt (message by
message), the mean prompt tokens and their share of the prompt budget (how
much history is kept), and the input cost modelled with OpenAI's
prompt caching: the prefix shared with the previous request is cached when it
is at least 1,024 tokens, in 128-token steps, billed at gpt-4.1's cached-input
price ($0.50 per 1M against $2.00).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import orjson

from proxy.compression import LOW_WATER, trim_history
from proxy.tokens import REPLY_PRIMING_TOKENS, count_message

AGENT = Path(__file__).resolve().parent / "data" / "agent"
MODEL = "gpt-4.1"
INPUT, CACHED_INPUT = 2.00, 0.50  # gpt-4.1, USD per 1M tokens
CACHE_MIN, CACHE_STEP = 1024, 128  # OpenAI caches prefixes of 1,024+ tokens, in 128-token steps
WINDOWS = (8192, 32768)


@dataclass
class Outcome:
    requests: int = 0
    stable: int = 0
    prompt_tokens: int = 0
    cost: float = 0.0

    def add(self, other: Outcome) -> None:
        self.requests += other.requests
        self.stable += other.stable
        self.prompt_tokens += other.prompt_tokens
        self.cost += other.cost


def session(path: Path, window: int) -> list[dict]:
    """The file's conversation, its task repeated until it is 3× ``window`` long."""
    messages = orjson.loads(path.read_bytes())["messages"]
    system = [m for m in messages if m["role"] == "system"]
    task = [m for m in messages if m["role"] != "system"]
    long = list(system)
    size = sum(count_message(m, MODEL) for m in long)
    repeat = 0
    while size < 3 * window:
        for message in orjson.loads(orjson.dumps(task).replace(b'"call_', f'"call_r{repeat}_'.encode())):
            if message["role"] == "user" and isinstance(message["content"], str):
                message["content"] = f"Task {repeat + 1}. {message['content']}"
            long.append(message)
            size += count_message(message, MODEL)
        repeat += 1
    return long


def requests(messages: list[dict]) -> list[list[dict]]:
    """What the agent sends: everything before each assistant message."""
    return [messages[:i] for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]


def replay(messages: list[dict], window: int, low_water: float) -> Outcome:
    sizes = {id(m): count_message(m, MODEL) for m in messages}
    outcome = Outcome()
    previous: list[dict] | None = None
    for prompt in requests(messages):
        sent = trim_history(prompt, MODEL, window, None, low_water=low_water)
        if previous is None and sent is prompt:
            continue  # trimming has not begun
        tokens = REPLY_PRIMING_TOKENS + sum(sizes[id(m)] for m in sent)
        shared = 0
        if previous is not None:
            common = 0
            for before, after in zip(previous, sent):
                if before is not after:
                    break
                common += 1
            outcome.stable += common == len(previous)
            shared = sum(sizes[id(m)] for m in sent[:common])
        cached = shared // CACHE_STEP * CACHE_STEP if shared >= CACHE_MIN else 0
        outcome.requests += previous is not None
        outcome.prompt_tokens += tokens
        outcome.cost += ((tokens - cached) * INPUT + cached * CACHED_INPUT) / 1_000_000
        previous = sent
    return outcome


def table() -> str:
    lines = [
        "| window | scheme | requests after trimming began | prefix-stable | mean prompt tokens | share of the budget | modelled input cost | vs old |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for window in WINDOWS:
        results: dict[str, Outcome] = {}
        budget = window - min(4096, window // 4)
        for scheme, low_water in (("old (turn by turn)", 1.0), (f"new (down to {LOW_WATER:.0%})", LOW_WATER)):
            total = Outcome()
            for path in sorted(AGENT.glob("*.json")):
                total.add(replay(session(path, window), window, low_water))
            results[scheme] = total
        old = next(iter(results.values()))
        for scheme, total in results.items():
            mean = total.prompt_tokens / (total.requests + len(list(AGENT.glob("*.json"))))
            lines.append(
                f"| {window:,} | {scheme} | {total.requests} | {total.stable / total.requests:.1%} "
                f"| {mean:,.0f} | {mean / budget:.1%} | ${total.cost:.4f} | {total.cost / old.cost - 1:+.1%} |"
            )
    return "\n".join(lines)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
