"""Sluice at other revisions against this checkout, in the same run: req/s and CPU time per request.

    .venv/bin/python bench/compare.py 1dd2f5b              # this checkout, the floor and 1dd2f5b
    .venv/bin/python bench/compare.py HEAD~5 v0.1 --rounds 9 --seconds 5
    .venv/bin/python bench/compare.py 066bdc1 --stream     # streamed chat (20 chunks + usage)

A regression in the chat path hides in `make bench`: its figures move by
10-40% between runs on a shared machine, so two runs' tables cannot be
compared. Here every build serves the same fake upstream in one run, in
interleaved rounds of non-streaming chat at c=16 (the floor too, as a yard
stick); each Sluice's CPU time (user + system, from /proc) divided by the
requests it answered moves far less than req/s. Each revision is checked out
with `git worktree` under bench/out/compare/ and runs on this checkout's
virtualenv, with one OpenAI provider (a config every revision reads): a
revision that needs packages this one does not may not start. Placement is
bench/run.py's: the proxies on core 0, the upstream and wrk on core 1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import yaml

import services
from cpu_cost import Targets, cpu_rounds
from loadgen import Request
from procs import OUT, REPO, Process, free_port, http_ok

WORKTREES = OUT / "compare"


def checkout(revision: str) -> Path:
    """``revision`` checked out (detached) under bench/out/compare/, refreshed if it was there."""
    path = WORKTREES / revision.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True, capture_output=True)
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), revision], check=True, capture_output=True
    )
    return path


def sluice_at(root: Path, label: str, port: int, upstream_port: int) -> Process:
    """Sluice from the source tree at ``root`` (first on its path, ahead of the installed checkout)."""
    config = {
        "server": {"host": "127.0.0.1"},
        "providers": [
            {"name": "openai", "type": "openai", "base_url": f"{services.base_url(upstream_port)}/v1", "api_key": "sk-bench"}
        ],
        "routing": {"default_provider": "openai"},
        "cache": {"enabled": False},
        "dedup": {"enabled": False},
        "compression": {"mode": "off"},
    }
    path = OUT / f"compare-{label}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = ["serve", "--config", str(path), "--port", str(port), "--workers", "1"]
    code = f"import runpy, sys; sys.path.insert(0, {str(root)!r}); sys.argv = ['proxy', *{argv!r}]; runpy.run_module('proxy', run_name='__main__')"
    return Process(f"compare-{label}", [sys.executable, "-c", code], services.PROXY_CORE, http_ok(f"{services.base_url(port)}/healthz"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions to measure beside this checkout")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--stream", action="store_true", help="streamed chat requests (bench/run.py's stream16)")
    args = parser.parse_args()
    request = Request(stream=args.stream)
    with ExitStack() as stack:
        upstream_port, floor_port = free_port(), free_port()
        stack.enter_context(services.upstream("compare", upstream_port))
        floor = stack.enter_context(services.floor("compare", floor_port, upstream_port))
        targets: Targets = {"floor": (services.base_url(floor_port), floor.pid)}
        builds = {"this checkout": REPO, **{revision: checkout(revision) for revision in args.revisions}}
        for n, (name, root) in enumerate(builds.items()):
            port = free_port()
            process = stack.enter_context(sluice_at(root, str(n), port, upstream_port))
            targets[name] = (services.base_url(port), process.pid)
        rates, costs = cpu_rounds(targets, request, args.rounds, args.seconds)
    for name in targets:
        print(f"{name:<16} median {statistics.median(rates[name]):8,.0f} req/s  {statistics.median(costs[name]):6.1f} µs/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
