"""The live dashboard in a real headless browser (Debian's chromium via playwright).

The page's clock is Playwright's fake clock, so each two-second poll happens
exactly when the test advances time: the test knows which /stats answer the
page has drawn and compares the numbers on screen with it, with no sleeps.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "proxy" / "dashboard"
SCREENSHOT = Path(__file__).resolve().parent / "artifacts" / "dashboard.png"
POLL_MS = 2000
# Enough polls to draw a good stretch of the five-minute window.
POLLS = 90


# -- a stand-in server: the dashboard files plus a /stats that moves ----------


def fake_stats(n: int) -> dict:
    """The /stats answer to the n-th poll: counters grow at a wavy rate."""
    total = errors = hits = misses = 0
    for i in range(1, n + 1):
        arrived = 60 + round(25 * math.sin(i / 4))
        total += arrived
        errors += i % 7 == 0
        hit_share = 0.55 + 0.2 * math.sin(i / 6)
        hits += round(arrived * hit_share)
        misses += arrived - round(arrived * hit_share)
    wave = math.sin(n / 5)
    return {
        "uptime_seconds": 3600.0 + 2.0 * n,
        "requests": {"total": total, "errors": errors},
        "cache": {"hits": hits, "misses": misses, "hit_rate": hits / max(1, hits + misses), "entries": misses},
        "dedup": {"joined": total // 25},
        "tokens": {
            "prompt": total * 850,
            "completion": total * 120,
            "saved_by_compression": total * 37,
            "saved_by_cache": hits * 610,
        },
        "cost_usd": {"spent": total * 0.00041, "saved": hits * 0.00038},
        "latency_ms": {"p50": 180 + 40 * wave, "p95": 420 + 90 * wave, "p99": 900 + 150 * math.sin(n / 3)},
        "ttft_ms": {"p50": 95 + 20 * wave, "p95": 240 + 50 * wave, "p99": 480 + 80 * math.sin(n / 3)},
        "providers": {
            "openai": {"requests": total // 2, "errors": errors},
            "gemini": {"requests": total // 3, "errors": 0},
            "ollama": {"requests": total - total // 2 - total // 3, "errors": 0},
        },
        "breakers": {
            "openai/gpt-4o-mini": "closed",
            "openai/gpt-4o": "closed",
            "gemini/gemini-2.5-flash": "half_open" if n % 20 < 10 else "open",
            "ollama/llama3.2": "half_open",
        },
        "keys": {
            "team-a": {"requests": total * 2 // 3, "tokens": total * 640, "cost_usd": total * 0.00027},
            "team-b": {"requests": total // 3, "tokens": total * 330, "cost_usd": total * 0.00014},
        },
        "retries": total // 40,
        "fallbacks": total // 90,
    }


def stand_in_app() -> Starlette:
    """What the real server serves for the dashboard: the page, its files, /stats."""
    polls = 0

    async def stats(request: Request) -> JSONResponse:
        nonlocal polls
        polls += 1
        return JSONResponse(fake_stats(polls))

    async def dashboard(request: Request) -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html")

    return Starlette(
        routes=[
            Route("/stats", stats),
            Route("/dashboard", dashboard),
            Mount("/dashboard", app=StaticFiles(directory=DASHBOARD_DIR)),
        ]
    )


@pytest.fixture(scope="module")
def dashboard_base_url():
    """Base URL of a server with /dashboard and /stats (a stand-in until the real app serves them)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(stand_in_app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stand-in server did not start"
        time.sleep(0.02)
    yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


# -- browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make system-test-deps)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    # Fake timers: the page polls only when the test calls page.clock.run_for().
    page.clock.install()
    yield page
    context.close()


class Problems:
    """Console errors and uncaught exceptions the page produced."""

    def __init__(self, page) -> None:
        self.console: list[str] = []
        self.exceptions: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.console.append(message.text))
        page.on("pageerror", lambda error: self.exceptions.append(str(error)))


def wait_for_updates(page, count: int) -> None:
    page.wait_for_function("n => Number(document.documentElement.dataset.updates) >= n", arg=count)


def next_poll(page) -> None:
    page.clock.run_for(POLL_MS)


def shown(page, selector: str) -> float:
    """The number an element shows, units and k/M/B suffixes undone (ms for durations)."""
    text = page.locator(selector).inner_text().strip()
    match = re.fullmatch(r"\(?\$?(-?[\d,]+(?:\.\d+)?)\s*(k|M|B|%|ms|s)?\)?", text)
    assert match, f"{selector} shows {text!r}, not a number"
    scale = {"k": 1e3, "M": 1e6, "B": 1e9, "s": 1e3}.get(match[2] or "", 1)
    return float(match[1].replace(",", "")) * scale


def approx(expected: float):
    # The page rounds for display (1 decimal, 12.3k, 1.23M): compare at that precision.
    return pytest.approx(expected, rel=0.01, abs=0.06)


def line_points(page, chart: str) -> list[int]:
    return page.eval_on_selector_all(f"#{chart} path.line", "paths => paths.map(p => Number(p.dataset.points))")


# -- tests ---------------------------------------------------------------------


def test_dashboard_draws_live_stats(page, dashboard_base_url):
    problems = Problems(page)
    answers = []
    page.on("response", lambda response: response.url.endswith("/stats") and answers.append(response))

    page.goto(f"{dashboard_base_url}/dashboard")
    wait_for_updates(page, 1)
    for polls in range(2, POLLS + 1):
        next_poll(page)
        wait_for_updates(page, polls)
    page.wait_for_function(
        """() => ['chart-throughput', 'chart-latency'].every(id =>
               [...document.querySelectorAll(`#${id} path.line`)].every(p => Number(p.dataset.points) >= 3))"""
    )

    assert len(answers) == POLLS
    before, last = answers[-2].json(), answers[-1].json()
    assert page.locator("#status").inner_text() == "live"

    # Charts: one line per series, a point per poll (rates need two polls), all on screen.
    assert line_points(page, "chart-throughput") == [POLLS - 1, POLLS - 1]
    assert line_points(page, "chart-latency") == [POLLS] * 3
    if "ttft_ms" in last:
        assert line_points(page, "chart-ttft") == [POLLS] * 3
    for d in page.eval_on_selector_all("svg.chart path.line", "paths => paths.map(p => p.getAttribute('d'))"):
        assert d.startswith("M") and "NaN" not in d

    # Tiles show the last answer.
    requests, cache, tokens = last["requests"], last["cache"], last["tokens"]
    rate = (requests["total"] - before["requests"]["total"]) / (last["uptime_seconds"] - before["uptime_seconds"])
    assert shown(page, "#rps") == approx(rate)
    assert shown(page, "#requests-total") == approx(requests["total"])
    assert shown(page, "#errors") == approx(requests["errors"])
    assert shown(page, "#hit-rate") == approx(100 * cache["hit_rate"])
    assert shown(page, "#cache-hits") == approx(cache["hits"])
    assert shown(page, "#cache-misses") == approx(cache["misses"])
    assert shown(page, "#tokens-saved") == approx(tokens["saved_by_compression"] + tokens["saved_by_cache"])
    assert shown(page, "#saved-compression") == approx(tokens["saved_by_compression"])
    assert shown(page, "#saved-cache") == approx(tokens["saved_by_cache"])
    assert shown(page, "#cost-saved") == approx(last["cost_usd"]["saved"])
    assert shown(page, "#cost-spent") == approx(last["cost_usd"]["spent"])
    assert shown(page, "#dedup-joined") == approx(last["dedup"]["joined"])
    for p in ("p50", "p95", "p99"):
        assert shown(page, f"#lat-{p}") == approx(last["latency_ms"][p])
        if "ttft_ms" in last:
            assert shown(page, f"#ttft-{p}") == approx(last["ttft_ms"][p])

    # Providers, breakers and keys, one row or badge each.
    assert page.locator("#providers tr[data-provider]").count() == len(last["providers"])
    for name, provider in last["providers"].items():
        cells = page.locator(f'#providers tr[data-provider="{name}"] td')
        assert float(cells.nth(1).inner_text().replace(",", "")) == approx(provider["requests"])
        assert float(cells.nth(2).inner_text().replace(",", "")) == approx(provider["errors"])
    assert page.locator("#breakers li[data-breaker]").count() == len(last["breakers"])
    for target, state in last["breakers"].items():
        badge = page.locator(f'#breakers li[data-breaker="{target}"] .badge')
        assert badge.get_attribute("data-state") == state
        assert state in badge.get_attribute("class").split()
        assert badge.inner_text() == state.replace("_", "-")
    if last.get("keys"):
        assert page.locator("#keys-panel").is_visible()
        assert page.locator("#keys tr[data-key]").count() == len(last["keys"])

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert problems.exceptions == []
    assert problems.console == []


def test_dashboard_survives_missing_fields_and_outages(page, dashboard_base_url):
    problems = Problems(page)
    # Each poll gets the next answer: odd shapes first, then an outage, then the real server again.
    answers = [
        {},
        {"requests": {"total": 0, "errors": 0}, "cache": {"hit_rate": 0}, "latency_ms": {"p50": 0}, "breakers": {}},
        {"requests": "n/a", "cache": None, "providers": [], "breakers": {"x/y": "weird"}, "keys": None, "uptime_seconds": -1},
        "HTTP 500",
        "connection refused",
        "real",
    ]

    def answer(route):
        current = answers.pop(0) if len(answers) > 1 else answers[0]
        if current == "HTTP 500":
            route.fulfill(status=500, body="boom")
        elif current == "connection refused":
            route.abort("connectionrefused")
        elif current == "real":
            route.continue_()
        else:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(current))

    page.route("**/stats", answer)
    page.goto(f"{dashboard_base_url}/dashboard")

    wait_for_updates(page, 1)
    assert page.locator("#status").inner_text() == "live"
    assert page.locator("#hit-rate").inner_text() == "—"
    assert page.locator("#lat-p50").inner_text() == "—"
    assert page.locator("#chart-latency .empty").text_content() == "no data yet"
    assert page.locator("#keys-panel").is_hidden()

    next_poll(page)
    wait_for_updates(page, 2)
    assert page.locator("#requests-total").inner_text() == "0"
    assert page.locator("#hit-rate").inner_text() == "0.0%"
    assert page.locator("#lat-p50").inner_text() == "0.0 ms"
    assert page.locator("#breakers").inner_text() == "no upstream targets used yet"

    next_poll(page)
    wait_for_updates(page, 3)
    assert page.locator("#requests-total").inner_text() == "—"
    assert page.locator('#breakers li[data-breaker="x/y"] .badge.unknown').inner_text() == "weird"

    next_poll(page)
    page.wait_for_function("() => document.getElementById('status').title.includes('HTTP 500')")
    assert page.locator("#status").inner_text() == "disconnected"
    assert page.evaluate("() => document.body.classList.contains('stale')")
    assert page.locator("#requests-total").inner_text() == "—", "the last numbers stay, dimmed"

    next_poll(page)
    page.wait_for_function("() => !document.getElementById('status').title.includes('HTTP 500')")
    assert page.locator("#status").inner_text() == "disconnected"

    next_poll(page)
    wait_for_updates(page, 4)
    assert page.locator("#status").inner_text() == "live"
    assert not page.evaluate("() => document.body.classList.contains('stale')")

    assert problems.exceptions == []
    # The browser itself logs failed loads; the page must add nothing of its own.
    assert [m for m in problems.console if not m.startswith("Failed to load resource")] == []


def test_dashboard_on_the_real_server_after_traffic(browser, start_proxy, fake_openai):
    """The page served by Sluice itself, polling Sluice's real /stats after real traffic."""
    import httpx

    from tests.conftest import openai_config

    proxy = start_proxy(openai_config(fake_openai))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "dashboard traffic"}]}
    for _ in range(3):
        assert httpx.post(f"{proxy.url}/v1/chat/completions", json=body).status_code == 200
    stream = {**body, "stream": True, "messages": [{"role": "user", "content": "streamed"}]}
    assert httpx.post(f"{proxy.url}/v1/chat/completions", json=stream).status_code == 200

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = Problems(page)
    try:
        page.goto(f"{proxy.url}/dashboard")
        wait_for_updates(page, 3)
        stats = httpx.get(f"{proxy.url}/stats").json()
        assert shown(page, "#requests-total") == stats["requests"]["total"] == 4
        assert shown(page, "#cache-hits") == stats["cache"]["hits"] == 2
        assert page.locator("#providers").inner_text().startswith("openai")
        points = line_points(page, "chart-throughput")
        assert points and all(p >= 2 for p in points), points
        assert not problems.console and not problems.exceptions
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT.with_name("dashboard-real.png")), full_page=True)
    finally:
        context.close()


def test_dashboard_asks_for_the_admin_key_once_per_tab(browser, start_proxy, fake_openai):
    """With an admin key set, /stats needs it: the page asks once and keeps it for the tab."""
    import httpx

    from tests.conftest import openai_config

    proxy = start_proxy(openai_config(fake_openai, auth={"admin_key": "adm-secret-key"}))
    assert httpx.get(f"{proxy.url}/stats").status_code == 401
    assert httpx.get(f"{proxy.url}/dashboard").status_code == 401
    admin = {"Authorization": "Bearer adm-secret-key"}
    assert httpx.get(f"{proxy.url}/dashboard", headers=admin).status_code == 200
    stats_calls: list[str | None] = []

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = Problems(page)
    page.on("request", lambda request: request.url.endswith("/stats") and stats_calls.append(request.headers.get("authorization")))
    try:
        page.goto(f"{proxy.url}/dashboard")
        page.wait_for_selector("#admin-key", state="visible")
        assert page.locator("#status").inner_text() == "locked"

        page.fill("#admin-key-input", "not-the-key")
        page.click("#admin-key button")
        page.wait_for_function("() => document.getElementById('admin-key-problem').textContent.includes('refused')")
        assert page.locator("#admin-key").is_visible()

        page.fill("#admin-key-input", "adm-secret-key")
        page.click("#admin-key button")
        wait_for_updates(page, 1)
        assert page.locator("#admin-key").is_hidden()
        assert page.locator("#status").inner_text() == "live"
        assert page.locator("#providers tr[data-provider]").count() == 1, "every configured provider, from the start"

        page.reload()
        wait_for_updates(page, 1)
        assert page.locator("#admin-key").is_hidden(), "asked once: the tab keeps the key"
        assert stats_calls[0] is None and stats_calls[-1] == "Bearer adm-secret-key"
        assert "adm-secret-key" not in page.url and "adm-secret-key" not in proxy.logs()
        assert not problems.exceptions
        assert [m for m in problems.console if not m.startswith("Failed to load resource")] == []
    finally:
        context.close()
