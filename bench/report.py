"""The benchmark's markdown report, and its place in bench/RESULTS.md.

RESULTS.md starts with a hand-written header (machine, method, targets); each
script regenerates only its own part, between markers that name it, so the
header's prose survives every run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadgen import WrkResult

Cell = WrkResult | str
"""A measurement, or why there is none."""
TRACED = "sluice, tracing on"
"""The target that is Sluice exporting OpenTelemetry spans (bench/otlp_sink.py receives them)."""


@dataclass
class Table:
    """One workload: a row per target (direct, floor, sluice, or a cache backend)."""

    key: str
    title: str
    rows: dict[str, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interleaved: dict[str, list[float]] = field(default_factory=dict)
    """By target: its req/s over its comparison's base (``checks``), one ratio a round, measured
    in alternating slices (bench/run.py's ``PAIRS``); the comparison is judged on these."""


@dataclass(frozen=True, slots=True)
class Check:
    """A performance target; `passed` is None when it could not be measured."""

    target: str
    passed: bool | None
    detail: str


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _figures(cell: WrkResult) -> tuple[str, str, str]:
    return f"{cell.rps:,.0f}", f"{cell.p50_ms:.2f}", f"{cell.p99_ms:.2f}"


def _workload_table(table: Table) -> list[str]:
    direct, floor = table.rows.get("direct"), table.rows.get("floor")
    lines = [
        f"### {table.title}",
        "",
        _row("target", "req/s", "p50 ms", "p99 ms", "p50 over direct", "req/s vs floor", "errors"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cell in table.rows.items():
        if isinstance(cell, str):
            lines.append(_row(name, "not measured", "", "", "", "", ""))
            continue
        over, share = "—", "—"
        if isinstance(direct, WrkResult) and name != "direct":
            over = f"{cell.p50_ms - direct.p50_ms:+.2f} ms"
        if isinstance(floor, WrkResult) and name in ("sluice", TRACED):
            share = f"{cell.rps / floor.rps:.0%}"
        lines.append(_row(name, *_figures(cell), over, share, cell.errors))
    return lines


def _cache_table(table: Table, floor: Cell | None) -> list[str]:
    lines = [
        f"### {table.title}",
        "",
        _row("target", "req/s", "p50 ms", "p99 ms", "× floor req/s (c=16)", "errors"),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, cell in table.rows.items():
        if isinstance(cell, str):
            lines.append(_row(name, "not measured", "", "", "", ""))
            continue
        ratio = f"{cell.rps / floor.rps:.1f}×" if isinstance(floor, WrkResult) else "—"
        lines.append(_row(name, *_figures(cell), ratio, cell.errors))
    return lines


CHAT_KEYS = ("c16", "stream16")
CLIENT_APIS = {
    "Responses, native": ("responses-native", "responses-native-stream"),
    "Responses, bridged": ("responses-bridged", "responses-bridged-stream"),
    "Messages, native": ("messages-native", "messages-native-stream"),
    "Messages, translated": ("messages-translated", "messages-translated-stream"),
}
"""Each way Sluice serves the other client APIs, as its (non-streaming, streaming) workloads."""


def _client_api_table(tables: dict[str, Table]) -> list[str]:
    """Sluice's c=16 figures per client API side by side, each as a share of Chat Completions'."""

    def sluice(key: str) -> WrkResult | None:
        cell = tables[key].rows.get("sluice") if key in tables else None
        return cell if isinstance(cell, WrkResult) else None

    lines = [
        "### Client APIs through Sluice, c=16",
        "",
        _row("API", "req/s", "vs chat", "p50 ms", "streaming req/s", "vs chat", "p50 ms"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    chat = [sluice(key) for key in CHAT_KEYS]
    for name, keys in {"Chat Completions": CHAT_KEYS, **CLIENT_APIS}.items():
        cells: list[str] = []
        for cell, base in zip([sluice(key) for key in keys], chat, strict=True):
            share = f"{cell.rps / base.rps:.0%}" if cell and base else "—"
            cells += [f"{cell.rps:,.0f}", share, f"{cell.p50_ms:.2f}"] if cell else ["—", "—", "—"]
        lines.append(_row(name, *cells))
    return lines


def checks(tables: dict[str, Table]) -> list[Check]:
    """The targets from the issue, each against the run's figures."""

    def cell(key: str, row: str) -> WrkResult | None:
        value = tables[key].rows.get(row) if key in tables else None
        return value if isinstance(value, WrkResult) else None

    def interleaved(key: str, row: str) -> list[float]:
        return tables[key].interleaved.get(row, []) if key in tables else []

    floor = cell("c16", "floor")
    result = [
        _check(
            "Sluice ≥ 90% of the floor's req/s, non-streaming c=16",
            _ratio_at_least(0.90, interleaved("c16", "sluice")),
            cell("c16", "sluice"),
            floor,
        ),
        _check(
            "Sluice adds ≤ 1 ms to p50 over direct, c=1",
            _adds_at_most(1.0),
            cell("c1", "sluice"),
            cell("c1", "direct"),
        ),
        _check(
            "Sluice ≥ 95% of the floor's req/s, 50 ms upstream c=64",
            _ratio_at_least(0.95, interleaved("delay50", "sluice")),
            cell("delay50", "sluice"),
            cell("delay50", "floor"),
        ),
        _check(
            "Tracing on keeps ≥ 90% of Sluice's req/s (costs ≤ 10%), non-streaming c=16",
            _ratio_at_least(0.90, interleaved("c16", TRACED)),
            cell("c16", TRACED),
            cell("c16", "sluice"),
        ),
        _check(
            "Native Responses ≥ 90% of Chat Completions' req/s through Sluice, non-streaming c=16",
            _ratio_at_least(0.90, interleaved("responses-native", "sluice")),
            cell("responses-native", "sluice"),
            cell("c16", "sluice"),
        ),
        _check(
            "Native Messages ≥ 90% of Chat Completions' req/s through Sluice, non-streaming c=16",
            _ratio_at_least(0.90, interleaved("messages-native", "sluice")),
            cell("messages-native", "sluice"),
            cell("c16", "sluice"),
        ),
    ]
    for row in tables["cache"].rows if "cache" in tables else ():
        if row != "sluice, memory cache":
            continue  # the targets are the memory backend's; the ceiling and Redis rows are reported
        hits = cell("cache", row)
        result.append(_check(f"Cache hits ({row}): p50 ≤ 0.5 ms", _p50_at_most(0.5), hits))
        result.append(
            _check(f"Cache hits ({row}): ≥ 3× the floor's req/s (c=16)", _at_least(3.0), hits, floor)
        )
    return result


Test = Callable[..., tuple[bool, str]]
"""Figures in, (passed, detail) out."""


def _check(target: str, test: Test, *cells: WrkResult | None) -> Check:
    """`test` on the figures, or "not measured" when one is missing."""
    if any(cell is None for cell in cells):
        return Check(target, None, "not measured")
    return Check(target, *test(*cells))


def _at_least(minimum: float) -> Test:
    def test(measured: WrkResult, floor: WrkResult) -> tuple[bool, str]:
        ratio = measured.rps / floor.rps
        shown = f"{ratio:.0%}" if minimum < 1 else f"{ratio:.1f}×"
        return ratio >= minimum, f"{shown} ({measured.rps:,.0f} vs {floor.rps:,.0f} req/s)"

    return test


def _ratio_at_least(minimum: float, ratios: list[float]) -> Test:
    """``_at_least``, judged on the median of the interleaved ``ratios`` when there are any: two
    runs back to back see the machine at two speeds (bench/RESULTS.md, "Method")."""
    back_to_back = _at_least(minimum)

    def test(measured: WrkResult, base: WrkResult) -> tuple[bool, str]:
        passed, detail = back_to_back(measured, base)
        if not ratios:
            return passed, detail
        middle = statistics.median(ratios)
        rounds = ", ".join(f"{ratio:.1%}" for ratio in ratios)
        return middle >= minimum, f"{middle:.0%} interleaved (rounds {rounds}); back to back {detail}"

    return test


def _adds_at_most(maximum_ms: float) -> Test:
    def test(measured: WrkResult, direct: WrkResult) -> tuple[bool, str]:
        added = measured.p50_ms - direct.p50_ms
        return added <= maximum_ms, f"{added:+.2f} ms ({measured.p50_ms:.2f} vs {direct.p50_ms:.2f} ms)"

    return test


def _p50_at_most(maximum_ms: float) -> Test:
    def test(measured: WrkResult) -> tuple[bool, str]:
        return measured.p50_ms <= maximum_ms, f"{measured.p50_ms:.2f} ms"

    return test


def render(tables: list[Table], context: list[str], problems: list[str]) -> str:
    """The generated section: context lines, target checks, one table per workload."""
    by_key = {table.key: table for table in tables}
    lines = ["## Latest benchmark run", "", *[f"- {line}" for line in context], "", "### Targets", ""]
    marks = {True: "✅", False: "❌", None: "❓"}
    lines += [f"- {marks[check.passed]} {check.target}: {check.detail}" for check in checks(by_key)]
    if problems:
        lines += ["", "### Problems", ""]
        for problem in problems:
            first, _, rest = problem.partition("\n")
            lines += [f"- {first}"] + (["", "  ```", rest, "  ```"] if rest else [])
    if any(key in by_key for keys in CLIENT_APIS.values() for key in keys):
        lines += [""] + _client_api_table(by_key)
    for table in tables:
        floor = by_key["c16"].rows.get("floor") if "c16" in by_key else None
        lines += [""] + (_cache_table(table, floor) if table.key == "cache" else _workload_table(table))
        lines += [f"\n{note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, owner: str) -> None:
    """Replace the part of `path` that `owner` generated, keeping everything else;
    a first run appends it."""
    begin = f"<!-- BEGIN GENERATED by {owner}: edits below are overwritten -->"
    end = f"<!-- END GENERATED by {owner} -->"
    text = path.read_text() if path.exists() else "# Sluice benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    path.write_text(f"{head}{begin}\n\n{section}\n{end}{tail}")
