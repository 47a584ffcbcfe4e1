"""The record of one request, filled in as it is served and read once at its end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    """Everything worth knowing about one request, filled in as it is served."""

    request_id: str
    method: str
    path: str
    started: float
    status: int = 0
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    key_name: str | None = None
    stream: bool = False
    cache: str | None = None
    dedup: bool = False
    attempts: int = 0
    retries: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_saved: int = 0
    tokens_saved_cache: int = 0
    trimmed_messages: int = 0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    cost_saved_provider_cache_usd: float = 0.0
    upstream_headers: dict[str, str] | None = None  # the upstream's x-request-id and x-ratelimit-*, for the client
    cached_tokens: int = 0  # prompt tokens the provider read from its own prompt cache
    cache_write_tokens: int = 0  # prompt tokens the provider wrote to its prompt cache
    reasoning_tokens: int = 0  # completion tokens spent reasoning
    similarity: float | None = None  # a semantic cache hit's
    upstream_seconds: float = 0.0
    ttft_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error_code: str | None = None
    tracked: bool = False
    # Read only by tracing (proxy.tracing), and only when it is on: references, never copies.
    body: dict[str, Any] | None = None
    completion: Any = None
    span: Any = None

    def overhead_ms(self) -> float:
        """Time spent inside Sluice so far, upstream time excluded."""
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds) * 1000)
