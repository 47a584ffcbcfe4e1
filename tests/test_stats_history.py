"""The dashboard's server-side history: the rings, then /stats/history on real servers (Redis shared)."""

from __future__ import annotations

import httpx
import pytest

from proxy.telemetry.history import COARSE, FINE, History
from proxy.telemetry.record import RequestRecord
from proxy.telemetry.tally import Tally
from tests.conftest import openai_config
from tests.redis_server import RedisServer, redis_server  # noqa: F401

T0 = 1_800_000_000  # a multiple of both intervals


def record(status: int = 200, cache: str = "miss", prompt: int = 10, completion: int = 5, cost: float = 0.01, ttft: float | None = None) -> RequestRecord:
    r = RequestRecord("req", "POST", "/v1/chat/completions", 0.0, status=status, cache=cache)
    r.prompt_tokens, r.completion_tokens, r.cost_usd, r.ttft_seconds = prompt, completion, cost, ttft
    return r


def intervals(rendered: dict) -> dict[int, list[dict]]:
    return {interval["seconds"]: interval["points"] for interval in rendered["intervals"]}


def test_requests_land_in_their_interval_and_roll_up_into_five_minutes() -> None:
    history = History()
    history.add(Tally.of(record(ttft=0.03), [0.004, 0.006]), now=T0 + 1)
    history.add(Tally.of(record(status=502, cache="bypass"), [0.2]), now=T0 + 9)
    history.add(Tally.of(record(cache="hit", prompt=0, completion=0, cost=0.0), [0.0008]), now=T0 + 12)

    rendered = intervals(history.render(now=T0 + 15))
    fine, coarse = rendered[FINE], rendered[COARSE]
    assert len(fine) == 3600 // FINE and len(coarse) == 86400 // COARSE, "dense: one point per interval"
    assert [p["t"] for p in fine[-2:]] == [T0, T0 + 10]
    first, second = fine[-2:]
    assert (first["requests"], first["errors"], first["cache_misses"], first["cache_hits"]) == (3, 1, 2, 0)
    assert (first["prompt_tokens"], first["completion_tokens"]) == (30, 15)
    assert first["cost_usd"] == pytest.approx(0.03)
    assert 2.5 <= first["latency_ms"]["p50"] <= 10 and 100 <= first["latency_ms"]["p99"] <= 250
    assert (second["requests"], second["cache_hits"]) == (1, 1)
    assert 25 <= first["ttft_ms"]["p50"] <= 50, "the streamed requests' first tokens"
    assert second["latency_ms"]["p50"] <= 1 and second["ttft_ms"] is None
    assert fine[0]["requests"] == 0 and fine[0]["latency_ms"] is None, "quiet intervals are zeros"
    assert coarse[-1]["t"] == T0 and coarse[-1]["requests"] == 4, "the filling 10 s bucket counts in its 5 min one"


def test_the_rings_keep_an_hour_and_a_day() -> None:
    history = History()
    for n in range(2 * 86400 // FINE):  # two days of one request per 10 s
        history.add(Tally.of(record(), [0.01]), now=T0 + n * FINE)
    assert len(history.fine) <= 3600 // FINE and len(history.coarse) <= 86400 // COARSE
    rendered = intervals(history.render(now=T0 + 2 * 86400 - 1))
    assert all(p["requests"] == 1 for p in rendered[FINE])
    assert all(p["requests"] == COARSE // FINE for p in rendered[COARSE])


def test_other_processes_buckets_add_up() -> None:
    mine, theirs = History(), History()
    mine.add(Tally.of(record(), [0.01]), now=T0 + 1)
    theirs.add(Tally.of(record(), [0.01]), now=T0 - 20)
    theirs.add(Tally.of(record(status=500), [0.5, 0.5]), now=T0 + 2)
    point = intervals(mine.render([theirs.buckets()], now=T0 + 5))[FINE][-1]
    assert (point["requests"], point["errors"]) == (3, 2)
    assert point["latency_ms"]["p99"] >= 250
    assert intervals(mine.render([theirs.buckets()], now=T0 + 5))[FINE][-3]["requests"] == 1


# -- the endpoint --

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "history"}]}


def test_history_on_first_read_after_traffic(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai))
    for _ in range(3):
        assert httpx.post(f"{proxy.url}/v1/chat/completions", json=BODY).status_code == 200
    history = httpx.get(f"{proxy.url}/stats/history").json()
    fine = intervals(history)[FINE]
    assert sum(p["requests"] for p in fine) == 3
    assert sum(p["cache_hits"] for p in fine) == 2
    assert sum(p["requests"] for p in intervals(history)[COARSE]) == 3
    assert fine[-1]["t"] <= history["now"] < fine[-1]["t"] + FINE


def test_history_needs_the_admin_key_when_one_is_set(start_proxy, fake_openai) -> None:
    proxy = start_proxy(openai_config(fake_openai, auth={"admin_key": "admin-secret"}))
    refused = httpx.get(f"{proxy.url}/stats/history")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    allowed = httpx.get(f"{proxy.url}/stats/history", headers={"Authorization": "Bearer admin-secret"})
    assert allowed.status_code == 200


def test_stats_shows_each_keys_limits_and_use(start_proxy, fake_openai) -> None:
    keys = [{"name": "team-a", "key": "sk-a", "rpm": 10, "tpm": 1000, "budget_usd_per_day": 2.5}]
    proxy = start_proxy(openai_config(fake_openai, auth={"keys": keys}))
    httpx.post(f"{proxy.url}/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer sk-a"})
    team = httpx.get(f"{proxy.url}/stats").json()["keys"]["team-a"]
    assert (team["rpm"], team["tpm"], team["budget_usd_per_day"]) == (10, 1000, 2.5)
    assert (team["requests_last_minute"], team["tokens_last_minute"]) == (1, 18)
    assert team["requests"] == 1 and team["spent_today_usd"] >= 0


def test_processes_share_their_history_through_redis(start_proxy, fake_openai, redis_server: RedisServer) -> None:  # noqa: F811
    config = openai_config(fake_openai, cache={"backend": "redis", "redis_url": redis_server.url})
    a, b = start_proxy(config), start_proxy(config)
    for n in range(2):
        httpx.post(f"{a.url}/v1/chat/completions", json={**BODY, "messages": [{"role": "user", "content": f"a{n}"}]})
    httpx.post(f"{b.url}/v1/chat/completions", json=BODY)
    assert a.stop() == 0  # a stopping process writes its last buckets
    fine = intervals(httpx.get(f"{b.url}/stats/history").json())[FINE]
    assert sum(p["requests"] for p in fine) == 3
