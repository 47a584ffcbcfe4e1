"""Requests counted in bulk (proxy/telemetry/tally.py): each kind's tally reaches /stats, the metrics and the
history whole, within ``Telemetry.FLUSH_AFTER`` or at the next read, and client strings cannot grow the tallies."""

from __future__ import annotations

import asyncio
import re

import pytest

from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord


def record(prompt: int, completion: int, cost: float, model: str = "gpt-4o-mini", status: int = 200, **fields: object) -> RequestRecord:
    r = RequestRecord("req", "POST", "/v1/chat/completions", 0.0, status=status, model=model, provider="openai",
                      upstream_model=model, cache="miss", tracked=True)
    r.prompt_tokens, r.completion_tokens, r.cost_usd, r.upstream_seconds = prompt, completion, cost, 0.002
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def metric(rendered: bytes, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", rendered.decode(), re.M)
    assert match is not None, f"{name}{labels} not in the metrics"
    return float(match.group(1))


def test_requests_of_one_kind_add_up_whatever_their_own_figures() -> None:
    telemetry = Telemetry()
    telemetry.finish(record(10, 5, 0.01))
    telemetry.finish(record(30, 7, 0.03, ttft_seconds=0.02, retries=1))
    telemetry.finish(record(2, 1, 0.001, tokens_saved=4, cost_saved_usd=0.004))
    telemetry.finish(record(1, 0, 0.0, status=502))
    telemetry.flush()
    snapshot = telemetry.stats.snapshot(0, {})
    assert snapshot["requests"] == {"total": 4, "errors": 1}
    assert (snapshot["tokens"]["prompt"], snapshot["tokens"]["completion"], snapshot["tokens"]["saved_by_compression"]) == (43, 13, 4)
    assert snapshot["cost_usd"]["spent"] == pytest.approx(0.041)
    assert snapshot["savings_usd"]["compression"] == pytest.approx(0.004)
    assert snapshot["retries"] == 1
    assert snapshot["models"]["gpt-4o-mini"]["requests"] == 4 and snapshot["models"]["gpt-4o-mini"]["prompt_tokens"] == 43
    assert snapshot["targets"]["openai/gpt-4o-mini"] == {"requests": 4, "errors": 1}
    assert snapshot["ttft_ms"]["p50"] == pytest.approx(20.0)
    rendered = telemetry.metrics.render()
    assert metric(rendered, "sluice_tokens_total", '{kind="prompt"}') == 43
    assert metric(rendered, "sluice_requests_total", '{cache="miss",model="gpt-4o-mini",provider="openai",status="200"}') == 3
    assert metric(rendered, "sluice_request_duration_seconds_count", '{provider="openai"}') == 4
    assert metric(rendered, "sluice_upstream_duration_seconds_count", '{provider="openai"}') == 4
    assert metric(rendered, "sluice_time_to_first_token_seconds_count", '{provider="openai"}') == 1
    points = telemetry.stats.history.render()["intervals"][0]["points"]
    assert sum(p["requests"] for p in points) == 4 and sum(p["prompt_tokens"] for p in points) == 43


def test_a_read_counts_what_waits_and_nothing_twice() -> None:
    telemetry = Telemetry()
    telemetry.finish(record(10, 5, 0.01))
    telemetry.flush()
    telemetry.flush()
    telemetry.finish(record(10, 5, 0.01))
    telemetry.flush()
    assert telemetry.stats.snapshot(0, {})["requests"]["total"] == 2
    assert metric(telemetry.metrics.render(), "sluice_tokens_total", '{kind="prompt"}') == 20


def test_clients_strings_cannot_grow_the_waiting_tallies() -> None:
    telemetry = Telemetry()
    count = Telemetry.MAX_TALLIES * 2 + 5
    for n in range(count):
        telemetry.finish(record(1, 1, 0.0, model=f"model-{n}"))
        assert len(telemetry._tallies) <= Telemetry.MAX_TALLIES
    telemetry.flush()
    assert telemetry.stats.snapshot(0, {})["requests"]["total"] == count


async def test_tallies_are_counted_within_the_flush_delay_without_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry = Telemetry()
    flushed = asyncio.Event()
    flush = telemetry.flush

    def flush_and_tell() -> None:
        flush()
        flushed.set()

    monkeypatch.setattr(telemetry, "flush", flush_and_tell)
    telemetry.finish(record(10, 5, 0.01))
    await asyncio.wait_for(flushed.wait(), Telemetry.FLUSH_AFTER + 10)
    assert telemetry.stats.requests == 1
