"use strict";
// Live view of GET /stats (CONTRACT §7), drawn over the server's own history
// (GET /stats/history: the last hour at 10 s, the last day at 5 min), so the
// charts show the past at once, then grow with a sample every two seconds.
// Any field may be missing (an older or newer server), so every read goes
// through num()/obj() and shows "—" instead.

const POLL_MS = 2000;
const TIMEOUT_MS = 5000;
const HISTORY_REFRESH_MS = 5 * 60 * 1000;
const HOUR_MS = 3600 * 1000;
// Each range: its width, the history interval it draws, its axis labels, whether live samples join.
const RANGES = {
  "1h": { ms: HOUR_MS, seconds: 10, live: true, hint: "last hour · 10 s intervals, then live",
          ticks: [60, 45, 30, 15, 0].map((m) => [m * 60000, m ? `-${m}m` : "now"]) },
  "24h": { ms: 24 * HOUR_MS, seconds: 300, live: false, hint: "last day · 5 min intervals",
           ticks: [24, 18, 12, 6, 0].map((h) => [h * HOUR_MS, h ? `-${h}h` : "now"]) },
};
// Long lists stay readable: the rest are summarised in one line.
const MAX_ROWS = 10;
const MAX_BREAKERS = 12;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLOR = { blue: "#4da3ff", green: "#3fb950", amber: "#d29922", red: "#f85149", purple: "#a371f7" };
// Worst first, so an open breaker is the first thing the eye lands on.
const BREAKER_STATES = ["open", "half_open", "closed"];

// A chart of one timing's p50 (filled), p95 and p99: the sample keys `${prefix}50`, `${prefix}95`, `${prefix}99`.
function percentileChart(id, prefix) {
  return {
    id,
    format: fmtMs,
    series: [
      { key: prefix + "50", label: "p50", color: COLOR.green, area: true },
      { key: prefix + "95", label: "p95", color: COLOR.amber },
      { key: prefix + "99", label: "p99", color: COLOR.red },
    ],
  };
}

const CHARTS = [
  {
    id: "chart-throughput",
    format: fmtRate,
    series: [
      { key: "rps", label: "requests", color: COLOR.blue, area: true },
      { key: "errps", label: "errors", color: COLOR.red },
    ],
  },
  percentileChart("chart-latency", "lat"),
  percentileChart("chart-ttft", "ttft"),
  {
    id: "chart-hit-rate",
    format: (v) => (v === null ? "—" : v.toFixed(1) + "%"),
    max: 100,
    series: [{ key: "hitRate", label: "hit rate", color: COLOR.purple, area: true }],
  },
];

// Samples for the charts, oldest first: `live` from the polls (an hour kept),
// `past` from the server's history by interval length. A sample without
// values (a failed poll, an idle interval's latency) breaks the lines, so an
// outage shows as a gap instead of a slope.
const live = [];
const past = {};
let range = "1h";
let previous = null; // {stats, now} of the last successful poll: rates need two
let updates = 0;

// -- reading /stats defensively --------------------------------------------

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function obj(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
}

function sum(...values) {
  return values.some((v) => v !== null) ? values.reduce((a, v) => a + (v ?? 0), 0) : null;
}

// A counter's growth; null when unknown or when it went backwards (restart).
function growth(current, before) {
  return current !== null && before !== null && current >= before ? current - before : null;
}

function perSecond(amount, seconds) {
  return amount !== null && seconds > 0 ? amount / seconds : null;
}

// A sample's timings from the `latency_ms` and `ttft_ms` of /stats or of a history point.
function timings(latencyMs, ttftMs) {
  const latency = obj(latencyMs), ttft = obj(ttftMs);
  return {
    lat50: num(latency.p50), lat95: num(latency.p95), lat99: num(latency.p99),
    ttft50: num(ttft.p50), ttft95: num(ttft.p95), ttft99: num(ttft.p99),
  };
}

// Percent of lookups that hit; null when unknown or when there were none.
function hitRate(hits, misses) {
  return hits !== null && misses !== null && hits + misses > 0 ? (100 * hits) / (hits + misses) : null;
}

function sampleOf(stats, now) {
  const sample = { t: now, ...timings(stats.latency_ms, stats.ttft_ms), rps: null, errps: null, hitRate: null };
  if (previous) {
    const before = previous.stats;
    // Server uptime is the honest clock for server counters; the browser's
    // clock is the fallback when a server does not report it.
    const uptime = growth(num(stats.uptime_seconds), num(before.uptime_seconds));
    const seconds = uptime || (now - previous.now) / 1000;
    const requests = obj(stats.requests), requestsBefore = obj(before.requests);
    sample.rps = perSecond(growth(num(requests.total), num(requestsBefore.total)), seconds);
    sample.errps = perSecond(growth(num(requests.errors), num(requestsBefore.errors)), seconds);
    const cache = obj(stats.cache), cacheBefore = obj(before.cache);
    sample.hitRate = hitRate(growth(num(cache.hits), num(cacheBefore.hits)), growth(num(cache.misses), num(cacheBefore.misses)));
  }
  return sample;
}

// A history point (one interval) as a chart sample, placed at the interval's end on the page's clock.
function sampleOfPoint(point, seconds, offset) {
  return {
    t: (point.t + seconds) * 1000 + offset,
    ...timings(point.latency_ms, point.ttft_ms),
    rps: perSecond(num(point.requests), seconds),
    errps: perSecond(num(point.errors), seconds),
    hitRate: hitRate(num(point.cache_hits), num(point.cache_misses)),
  };
}

// The samples the current range draws: its history, then (for the hour) the live samples after it.
function samples() {
  const chosen = RANGES[range];
  const history = past[chosen.seconds] ?? [];
  if (!chosen.live) return history;
  const last = history.length ? history[history.length - 1].t : -Infinity;
  return history.concat(live.filter((sample) => sample.t > last));
}

// -- formatting --------------------------------------------------------------

function fmtCount(n) {
  if (n === null) return "—";
  const abs = Math.abs(n);
  if (abs < 1e4) return Math.round(n).toLocaleString("en-US");
  if (abs < 1e6) return (n / 1e3).toFixed(1) + "k";
  if (abs < 1e9) return (n / 1e6).toFixed(2) + "M";
  return (n / 1e9).toFixed(2) + "B";
}

function fmtRate(n) {
  if (n === null) return "—";
  if (n < 10) return n.toFixed(2);
  if (n < 1000) return n.toFixed(1);
  return fmtCount(n);
}

// A duration as [value, unit], so tiles can set the unit in smaller type.
function msParts(n) {
  if (n === null) return ["—", ""];
  if (n < 10) return [n.toFixed(1), "ms"];
  if (n < 1000) return [String(Math.round(n)), "ms"];
  return [(n / 1000).toFixed(2), "s"];
}

function fmtMs(n) {
  return msParts(n).join(" ").trim();
}

function fmtPercent(fraction) {
  return fraction === null ? "—" : (fraction * 100).toFixed(1) + "%";
}

function fmtUsd(n) {
  if (n === null) return "—";
  // Sub-dollar amounts are the common case for savings early on: keep them visible.
  if (n > 0 && n < 1) return "$" + n.toFixed(4);
  return "$" + n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function fmtUptime(seconds) {
  if (seconds === null || seconds < 0) return "";
  const s = Math.floor(seconds);
  const [d, h, m] = [Math.floor(s / 86400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60];
  if (d) return `up ${d}d ${h}h`;
  if (h) return `up ${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `up ${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `up ${s}s`;
}

// -- DOM ---------------------------------------------------------------------

function el(tag, { className, text, data, title } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (title) node.title = title;
  Object.assign(node.dataset, data);
  node.append(...children);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function show(id, text) {
  document.getElementById(id).textContent = text;
}

function showDuration(id, ms) {
  const [value, unit] = msParts(ms);
  document.getElementById(id).replaceChildren(value, el("small", { text: unit && " " + unit }));
}

function setStatus(kind, text, title) {
  const status = document.getElementById("status");
  status.className = "status " + kind;
  status.textContent = text;
  status.title = title;
  document.body.classList.toggle("stale", kind === "disconnected");
}

function renderTiles(stats, sample) {
  const requests = obj(stats.requests), cache = obj(stats.cache), tokens = obj(stats.tokens);
  const cost = obj(stats.cost_usd), latency = obj(stats.latency_ms), ttft = obj(stats.ttft_ms);
  const total = num(requests.total), errors = num(requests.errors);

  show("uptime", fmtUptime(num(stats.uptime_seconds)));
  show("rps", fmtRate(sample.rps ?? latestOf(past[RANGES["1h"].seconds] ?? [], "rps")));
  show("requests-total", fmtCount(total));
  show("errors", fmtCount(errors));
  show("error-rate", total && errors !== null ? `(${fmtPercent(errors / total)})` : "");
  show("hit-rate", fmtPercent(num(cache.hit_rate)));
  show("cache-hits", fmtCount(num(cache.hits)));
  show("cache-misses", fmtCount(num(cache.misses)));
  show("cache-entries", fmtCount(num(cache.entries)));
  const compression = num(tokens.saved_by_compression), cached = num(tokens.saved_by_cache);
  show("tokens-saved", fmtCount(sum(compression, cached)));
  show("saved-compression", fmtCount(compression));
  show("saved-cache", fmtCount(cached));
  show("cost-saved", fmtUsd(num(cost.saved)));
  show("cost-spent", fmtUsd(num(cost.spent)));
  show("dedup-joined", fmtCount(num(obj(stats.dedup).joined)));
  for (const p of ["p50", "p95", "p99"]) {
    showDuration("lat-" + p, num(latency[p]));
    showDuration("ttft-" + p, num(ttft[p]));
  }
  show("retries", fmtCount(num(stats.retries)));
  show("fallbacks", fmtCount(num(stats.fallbacks)));
}

function emptyRow(columns, text) {
  const cell = el("td", { className: "none", text });
  cell.colSpan = columns;
  return el("tr", {}, cell);
}

function renderProviders(providers) {
  const rows = Object.entries(providers).sort(([a], [b]) => a.localeCompare(b));
  const counts = rows.map(([, p]) => num(obj(p).requests) ?? 0);
  const busiest = Math.max(1, ...counts);
  document.getElementById("providers").replaceChildren(
    ...rows.map(([name, provider], i) => {
      const errors = num(obj(provider).errors);
      const bar = el("div");
      bar.style.width = `${(100 * counts[i]) / busiest}%`;
      return el(
        "tr",
        { data: { provider: name } },
        el("td", { text: name }),
        el("td", { className: "num", text: fmtCount(num(obj(provider).requests)) }),
        el("td", { className: errors ? "num bad" : "num", text: fmtCount(errors) }),
        el("td", { className: "num", text: counts[i] && errors !== null ? fmtPercent(errors / counts[i]) : "—" }),
        el("td", {}, el("div", { className: "bar" }, bar)),
      );
    }),
  );
  if (!rows.length) document.getElementById("providers").append(emptyRow(5, "no traffic yet"));
}

function renderBreakers(breakers) {
  const rank = (state) => (BREAKER_STATES.includes(state) ? BREAKER_STATES.indexOf(state) : BREAKER_STATES.length);
  const entries = Object.entries(breakers).sort(([a, x], [b, y]) => rank(x) - rank(y) || a.localeCompare(b));
  const list = document.getElementById("breakers");
  list.replaceChildren(
    ...entries.slice(0, MAX_BREAKERS).map(([target, state]) => {
      const known = BREAKER_STATES.includes(state);
      const label = known ? state.replace("_", "-") : String(state);
      return el(
        "li",
        { data: { breaker: target } },
        el("span", { className: "target", text: target, title: target }),
        el("span", { className: "badge " + (known ? state : "unknown"), text: label, data: { state: String(state) } }),
      );
    }),
  );
  if (!entries.length) list.append(el("li", { className: "none", text: "no upstream targets used yet" }));
  const hidden = entries.length - MAX_BREAKERS;
  if (hidden > 0) list.append(el("li", { className: "none more", text: `+${hidden} more, healthiest last` }));
  const count = (state) => entries.filter(([, s]) => s === state).length;
  show("breaker-summary", entries.length ? `${count("open")} open · ${count("half_open")} half-open · ${count("closed")} closed` : "");
}

// A cell showing `used` of `limit` with a bar that turns amber, then red, as the limit nears.
function meterCell(used, limit, format) {
  if (limit === null) return el("td", { className: "meter none", text: "no limit" });
  const share = used === null ? 0 : Math.min(1, used / Math.max(limit, Number.EPSILON));
  const bar = el("div");
  bar.style.width = `${100 * share}%`;
  const level = share >= 1 ? "bad" : share >= 0.8 ? "warn" : "ok";
  return el(
    "td",
    { className: "meter", data: { level } },
    el("span", { className: "used", text: `${format(used)} / ${format(limit)}` }),
    el("div", { className: "bar " + level }, bar),
  );
}

function renderKeys(keys) {
  const rows = Object.entries(keys).sort(([a], [b]) => a.localeCompare(b));
  document.getElementById("keys-panel").hidden = !rows.length;
  document.getElementById("keys").replaceChildren(
    ...rows.map(([name, value]) => {
      const key = obj(value);
      const tokens = num(key.tokens) ?? sum(num(key.prompt_tokens), num(key.completion_tokens));
      const errors = num(key.errors);
      return el(
        "tr",
        { data: { key: name } },
        el("td", { text: name }),
        el("td", { className: "num", text: fmtCount(num(key.requests)) }),
        el("td", { className: errors ? "num bad" : "num", text: fmtCount(errors) }),
        el("td", { className: "num", text: fmtCount(tokens) }),
        el("td", { className: "num", text: fmtUsd(num(key.cost_usd)) }),
        withClass(meterCell(num(key.spent_today_usd), num(key.budget_usd_per_day), fmtUsd), "budget"),
        withClass(meterCell(num(key.requests_last_minute), num(key.rpm), fmtCount), "rpm"),
        withClass(meterCell(num(key.tokens_last_minute), num(key.tpm), fmtCount), "tpm"),
      );
    }),
  );
}

function withClass(node, name) {
  node.classList.add(name);
  return node;
}

// The busiest first; past MAX_ROWS, one summary line.
function topRows(table, score) {
  const rows = Object.entries(table).map(([name, value]) => [name, obj(value)]);
  rows.sort(([a, x], [b, y]) => score(y) - score(x) || a.localeCompare(b));
  return [rows.slice(0, MAX_ROWS), rows.length - MAX_ROWS];
}

function renderModels(models) {
  const [rows, hidden] = topRows(models, (m) => num(m.requests) ?? 0);
  document.getElementById("models-panel").hidden = !rows.length;
  const busiest = Math.max(1, ...rows.map(([, m]) => num(m.requests) ?? 0));
  const body = document.getElementById("models");
  body.replaceChildren(
    ...rows.map(([name, model]) => {
      const errors = num(model.errors);
      const bar = el("div");
      bar.style.width = `${(100 * (num(model.requests) ?? 0)) / busiest}%`;
      return el(
        "tr",
        { data: { model: name } },
        el("td", { text: name }),
        el("td", { className: "num", text: fmtCount(num(model.requests)) }),
        el("td", { className: errors ? "num bad" : "num", text: fmtCount(errors) }),
        el("td", { className: "num", text: fmtCount(sum(num(model.prompt_tokens), num(model.completion_tokens))) }),
        el("td", { className: "num", text: fmtUsd(num(model.cost_usd)) }),
        el("td", {}, el("div", { className: "bar" }, bar)),
      );
    }),
  );
  if (hidden > 0) body.append(emptyRow(6, `+${hidden} more models`));
  show("models-summary", rows.length ? "busiest first" : "");
}

function renderTargets(targets) {
  const [rows, hidden] = topRows(targets, (t) => (num(t.errors) ?? 0) * 1e9 + (num(t.requests) ?? 0));
  document.getElementById("targets-panel").hidden = !rows.length;
  const body = document.getElementById("targets");
  body.replaceChildren(
    ...rows.map(([name, target]) => {
      const requests = num(target.requests), errors = num(target.errors);
      return el(
        "tr",
        { data: { target: name } },
        el("td", { className: "target", text: name, title: name }),
        el("td", { className: "num", text: fmtCount(requests) }),
        el("td", { className: errors ? "num bad" : "num", text: fmtCount(errors) }),
        el("td", { className: "num", text: requests && errors !== null ? fmtPercent(errors / requests) : "—" }),
      );
    }),
  );
  if (hidden > 0) body.append(emptyRow(4, `+${hidden} more targets`));
  const failing = rows.filter(([, t]) => num(t.errors)).length;
  show("targets-summary", rows.length ? `${failing} with errors` : "");
}

// Dollars and tokens saved by each of Sluice's means, plus the provider's own prompt cache when reported.
function renderSavings(stats) {
  const savings = obj(stats.savings_usd), tokens = obj(stats.tokens), cost = obj(stats.cost_usd);
  const sources = [
    ["cache", "response cache", num(tokens.saved_by_cache), num(savings.cache)],
    ["dedup", "dedup joins", null, num(savings.dedup)],
    ["compression", "compression", num(tokens.saved_by_compression), num(savings.compression)],
  ];
  if (num(cost.saved_by_provider_cache) !== null || num(tokens.cached_by_provider) !== null) {
    sources.push(["provider_cache", "provider prompt cache", num(tokens.cached_by_provider), num(cost.saved_by_provider_cache)]);
  }
  const largest = Math.max(Number.EPSILON, ...sources.map(([, , , usd]) => usd ?? 0));
  document.getElementById("savings").replaceChildren(
    ...sources.map(([id, label, saved, usd]) => {
      const bar = el("div");
      bar.style.width = `${(100 * (usd ?? 0)) / largest}%`;
      return el(
        "tr",
        { data: { source: id } },
        el("td", { text: label }),
        el("td", { className: "num", text: fmtCount(saved) }),
        el("td", { className: "num usd", text: fmtUsd(usd) }),
        el("td", {}, el("div", { className: "bar green" }, bar)),
      );
    }),
  );
}

// -- charts --------------------------------------------------------------------

// A round step (1, 2 or 5 × 10^n) giving about four gridlines up to `max`.
function niceStep(max) {
  const raw = max / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].find((m) => m * magnitude >= raw) * magnitude;
}

function axisLabel(value, step) {
  if (value >= 1000) return fmtCount(value);
  return value.toFixed(Math.max(0, -Math.floor(Math.log10(step))));
}

function linePoints(data, key, x, y) {
  const segments = [];
  let current = null;
  for (const sample of data) {
    const value = sample[key];
    if (value === null || value === undefined) {
      current = null;
      continue;
    }
    if (!current) segments.push((current = []));
    current.push([x(sample.t), y(value)]);
  }
  return segments;
}

function pathOf(segments) {
  return segments.map((points) => "M" + points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join("L")).join("");
}

// Each segment closed down to the baseline, for the soft fill under a line.
function areaOf(segments, base) {
  return segments.map((points) => pathOf([[[points[0][0], base], ...points, [points[points.length - 1][0], base]]]) + "Z").join("");
}

function drawChart(chart, now, data, shown) {
  const node = document.getElementById(chart.id);
  const width = node.clientWidth, height = node.clientHeight;
  if (!width || !height) return;
  const pad = { left: 40, right: 6, top: 8, bottom: 20 };
  const values = data.flatMap((s) => chart.series.map((c) => s[c.key])).filter((v) => v !== null && v !== undefined);
  const peak = chart.max ?? values.reduce((a, v) => Math.max(a, v), 0);
  const step = niceStep(peak > 0 ? peak : 1);
  const top = Math.max(step, Math.ceil(peak / step) * step);
  const x = (t) => pad.left + ((t - (now - shown.ms)) / shown.ms) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - v / top) * (height - pad.top - pad.bottom);

  // Pixel-for-pixel viewBox: text keeps its size whatever the panel width.
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const parts = [];
  for (let v = 0; v <= top + step / 2; v += step) {
    parts.push(svg("line", { class: "gridline", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
    const label = svg("text", { class: "axis", x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = axisLabel(v, step);
    parts.push(label);
  }
  shown.ticks.forEach(([ago, text], i) => {
    const anchor = i === 0 ? "start" : ago === 0 ? "end" : "middle";
    const label = svg("text", { class: "axis", x: x(now - ago), y: height - 4, "text-anchor": anchor });
    label.textContent = text;
    parts.push(label);
  });
  for (const series of chart.series) {
    const segments = linePoints(data, series.key, x, y);
    if (series.area && segments.length) parts.push(svg("path", { class: "area", d: areaOf(segments, y(0)), fill: series.color }));
    const points = segments.reduce((n, s) => n + s.length, 0);
    // A lone point has no line to draw: a round cap on a zero-length segment shows it.
    const d = pathOf(segments.map((s) => (s.length === 1 ? [s[0], s[0]] : s)));
    parts.push(svg("path", { class: "line", d, stroke: series.color, "data-series": series.key, "data-points": points }));
  }
  if (!values.length) {
    const empty = svg("text", { class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle" });
    empty.textContent = "no data yet";
    parts.push(empty);
  }
  node.replaceChildren(...parts);
  drawLegend(chart, node, data);
}

function drawLegend(chart, node, data) {
  const caption = node.parentElement.querySelector("figcaption");
  let legend = caption.querySelector(".legend");
  if (!legend) caption.append((legend = el("span", { className: "legend" })));
  legend.replaceChildren(
    ...chart.series.map((series) => {
      const dot = el("i");
      dot.style.background = series.color;
      return el("span", {}, dot, `${series.label} ${chart.format(latestOf(data, series.key))}`);
    }),
  );
}

// The newest known value of a series: the legend keeps showing it across a gap.
function latestOf(data, key) {
  for (let i = data.length - 1; i >= 0; i--) {
    const value = data[i][key];
    if (value !== null && value !== undefined) return value;
  }
  return null;
}

function drawCharts() {
  const now = Date.now();
  const shown = RANGES[range];
  const data = samples().filter((sample) => sample.t >= now - shown.ms);
  for (const chart of CHARTS) drawChart(chart, now, data, shown);
}

function chooseRange(name) {
  range = name;
  for (const button of document.querySelectorAll(".range button")) {
    button.setAttribute("aria-pressed", String(button.dataset.range === name));
  }
  show("range-hint", RANGES[name].hint);
  drawCharts();
}

// -- polling -------------------------------------------------------------------

function remember(sample) {
  live.push(sample);
  while (live.length && live[0].t < sample.t - HOUR_MS) live.shift();
}

// The server's history, on the page's clock (the server's `now` maps to ours). Only whole
// intervals are drawn: the one still filling would read low, and the live samples cover it.
async function loadHistory() {
  try {
    const response = await fetch("/stats/history", { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (!response.ok) return; // an older server, or no access: the charts fill from live samples
    const data = obj(await response.json());
    const serverNow = num(data.now);
    if (serverNow === null) return;
    const offset = Date.now() - serverNow * 1000;
    for (const interval of Array.isArray(data.intervals) ? data.intervals : []) {
      const seconds = num(obj(interval).seconds);
      const points = Array.isArray(interval.points) ? interval.points.map(obj) : [];
      if (!seconds) continue;
      past[seconds] = points
        .filter((point) => num(point.t) !== null && point.t + seconds <= serverNow)
        .map((point) => sampleOfPoint(point, seconds, offset));
    }
  } catch {
    // unreachable or malformed: the live samples still draw
  }
}

function render(stats) {
  const now = Date.now();
  const sample = sampleOf(stats, now);
  previous = { stats, now };
  remember(sample);
  renderTiles(stats, sample);
  renderProviders(obj(stats.providers));
  renderBreakers(obj(stats.breakers));
  renderTargets(obj(stats.targets));
  renderSavings(stats);
  renderKeys(obj(stats.keys));
  renderModels(obj(stats.models));
  drawCharts();
  updates += 1;
  // Lets a watcher (and the browser test) see that a poll was rendered.
  document.documentElement.dataset.updates = String(updates);
  setStatus("live", "live", "last update " + new Date(now).toLocaleTimeString());
}

// -- the admin key -----------------------------------------------------------
// /stats shows key names and spend, so a server with an admin key asks for it.
// It is asked for once (on a 401) and kept in sessionStorage: this tab only,
// gone when the tab closes, never in a URL.

const KEY_STORE = "sluice.adminKey";

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch {
    return null; // storage disabled: ask again on the next 401
  }
}

function askForKey(rejected) {
  const form = document.getElementById("admin-key");
  document.getElementById("admin-key-problem").textContent = rejected ? "That key was refused." : "";
  form.hidden = false;
  setStatus("disconnected", "locked", "GET /stats needs the admin key");
}

document.getElementById("admin-key").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("admin-key-input");
  try {
    sessionStorage.setItem(KEY_STORE, input.value);
  } catch {
    return;
  }
  input.value = "";
  document.getElementById("admin-key").hidden = true;
  setStatus("connecting", "connecting…", "");
  clearTimeout(nextPoll);
  poll();
});

async function fetchStats() {
  const key = storedKey();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    const response = await fetch("/stats", { cache: "no-store", headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (response.status === 401) {
      if (key) sessionStorage.removeItem(KEY_STORE);
      askForKey(Boolean(key));
      return null;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return obj(await response.json());
  } catch (error) {
    remember({ t: Date.now() });
    drawCharts();
    setStatus("disconnected", "disconnected", `GET /stats failed: ${error.message}; retrying every ${POLL_MS / 1000} s`);
    return null;
  }
}

let nextPoll = null;

async function poll() {
  try {
    const stats = await fetchStats();
    if (stats) render(stats);
  } finally {
    // Scheduled after each answer, not on a fixed interval: a slow server never piles up requests.
    // While the key is asked for, the next poll waits for it.
    if (document.getElementById("admin-key").hidden) nextPoll = setTimeout(poll, POLL_MS);
  }
}

async function refreshHistory() {
  try {
    await loadHistory();
    drawCharts();
  } finally {
    setTimeout(refreshHistory, HISTORY_REFRESH_MS);
  }
}

window.addEventListener("resize", drawCharts);
for (const button of document.querySelectorAll(".range button")) {
  button.addEventListener("click", () => chooseRange(button.dataset.range));
}
// History first, so the first drawing already shows the past.
loadHistory().then(() => {
  poll();
  setTimeout(refreshHistory, HISTORY_REFRESH_MS);
});
