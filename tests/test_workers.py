"""``--workers N``: several processes on one port, metrics aggregated across them."""

from __future__ import annotations

import re

import httpx

from tests.conftest import openai_config


def test_two_workers_serve_and_aggregate_metrics(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}), args=["--workers", "2"])
    pids: set[int] = set()
    sent = 0
    while len(pids) < 2 or sent < 20:  # new connections until both workers have answered
        assert sent < 400, f"only workers {pids} ever answered"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{sent}"}]}
        with httpx.Client() as client:
            response = client.post(f"{proxy.url}/v1/chat/completions", json=body)
            assert response.status_code == 200
            sent += 1
            pids.add(client.get(f"{proxy.url}/stats").json()["pid"])
    metrics = httpx.get(f"{proxy.url}/metrics").text
    counted = sum(
        float(value)
        for value in re.findall(r'^sluice_requests_total\{[^}]*status="200"[^}]*\} ([0-9.e+]+)$', metrics, re.M)
    )
    assert counted == sent, "every worker's requests are in /metrics, whichever worker answers it"
    assert proxy.stop() == 0
