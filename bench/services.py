"""The servers the benchmarks start, each pinned where the method says.

The proxy under test (floor or Sluice) gets core 0 to itself; the fake
upstream, redis and the load generator share core 1, so the proxy's cost is
what the figures show.

Each is named by a label (its log is bench/out/<server>-<label>.log), so a
rerun overwrites the last run's logs instead of piling up new ones.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

import yaml

from procs import OUT, Process, http_ok, tcp_open

PROXY_CORE = 0
LOAD_CORE = 1
BENCH = OUT.parent


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def upstream(label: str, port: int, delay_ms: float = 0, chaos: float = 0, seed: int = 1) -> Process:
    argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port), "--delay-ms", str(delay_ms)]
    argv += ["--chaos", str(chaos), "--seed", str(seed)]
    return Process(f"upstream-{label}", argv, LOAD_CORE, http_ok(f"{base_url(port)}/__stats"))


def floor(label: str, port: int, upstream_port: int) -> Process:
    argv = [
        sys.executable,
        str(BENCH / "floor.py"),
        "--port",
        str(port),
        "--upstream",
        f"{base_url(upstream_port)}/v1",
    ]
    return Process(f"floor-{label}", argv, PROXY_CORE, tcp_open(port))


def ceiling(label: str, port: int) -> Process:
    argv = [sys.executable, str(BENCH / "ceiling.py"), "--port", str(port)]
    return Process(f"ceiling-{label}", argv, PROXY_CORE, tcp_open(port))


def otlp_sink(label: str, port: int) -> Process:
    """The OTLP/HTTP collector the tracing workload exports to (bench/otlp_sink.py)."""
    argv = [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(port)]
    return Process(f"otlp-sink-{label}", argv, LOAD_CORE, http_ok(f"{base_url(port)}/__stats"))


def sluice(label: str, port: int, config: dict[str, Any], env: dict[str, str] | None = None) -> Process:
    """Sluice with `config` written to bench/out/sluice-<label>.yaml, one worker; `env` adds
    to its environment (the tracing workload's `OTEL_*`)."""
    name = f"sluice-{label}"
    path = OUT / f"{name}.yaml"
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return Process(name, argv, PROXY_CORE, http_ok(f"{base_url(port)}/healthz"), env=env)


def sluice_config(upstream_port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """Three providers at the one fake upstream, one per way a client API is served:
    `openai` (Chat Completions and Responses natively, the default provider),
    `openai-chat` (`responses: false`, so Responses are bridged over Chat
    Completions) and `anthropic` (Messages natively); workloads pick one by
    `provider/model`. Cache, dedup and compression off (wrk repeats one body,
    which dedup would merge), unless `sections` say otherwise."""
    upstream = f"{base_url(upstream_port)}/v1"
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1"},
        "providers": [
            {"name": "openai", "type": "openai", "base_url": upstream, "api_key": "sk-bench"},
            {"name": "openai-chat", "type": "openai", "base_url": upstream, "api_key": "sk-bench", "responses": False},
            {"name": "anthropic", "type": "anthropic", "base_url": upstream, "api_key": "sk-ant-bench"},
        ],
        "routing": {"default_provider": "openai"},
        "cache": {"enabled": False},
        "dedup": {"enabled": False},
        "compression": {"mode": "off"},
    }
    config.update(sections)
    return config


def redis(label: str, port: int) -> Process:
    """A throwaway redis-server: loopback only, nothing persisted."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Process(f"redis-{label}", argv, LOAD_CORE, _redis_pong(port))


def _redis_pong(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    return check
