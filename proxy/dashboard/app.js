"use strict";
// Live view of GET /stats (CONTRACT §7). Polls every two seconds and keeps five
// minutes of samples for the charts. Any field may be missing (an older or
// newer server), so every read goes through num()/obj() and shows "—" instead.

const POLL_MS = 2000;
const TIMEOUT_MS = 5000;
const WINDOW_MS = 5 * 60 * 1000;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLOR = { blue: "#4da3ff", green: "#3fb950", amber: "#d29922", red: "#f85149", purple: "#a371f7" };
// Worst first, so an open breaker is the first thing the eye lands on.
const BREAKER_STATES = ["open", "half_open", "closed"];

const CHARTS = [
  {
    id: "chart-throughput",
    format: fmtRate,
    series: [
      { key: "rps", label: "requests", color: COLOR.blue, area: true },
      { key: "errps", label: "errors", color: COLOR.red },
    ],
  },
  {
    id: "chart-latency",
    format: fmtMs,
    series: [
      { key: "p50", label: "p50", color: COLOR.green, area: true },
      { key: "p95", label: "p95", color: COLOR.amber },
      { key: "p99", label: "p99", color: COLOR.red },
    ],
  },
  {
    id: "chart-ttft",
    format: fmtMs,
    series: [
      { key: "ttft50", label: "p50", color: COLOR.green, area: true },
      { key: "ttft95", label: "p95", color: COLOR.amber },
      { key: "ttft99", label: "p99", color: COLOR.red },
    ],
  },
  {
    id: "chart-hit-rate",
    format: (v) => (v === null ? "—" : v.toFixed(1) + "%"),
    max: 100,
    series: [{ key: "hitRate", label: "hit rate", color: COLOR.purple, area: true }],
  },
];

// Samples for the charts, oldest first. A sample without values (a failed
// poll) breaks the lines, so an outage shows as a gap instead of a slope.
const history = [];
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

function sampleOf(stats, now) {
  const latency = obj(stats.latency_ms);
  const ttft = obj(stats.ttft_ms);
  const sample = {
    t: now,
    p50: num(latency.p50), p95: num(latency.p95), p99: num(latency.p99),
    ttft50: num(ttft.p50), ttft95: num(ttft.p95), ttft99: num(ttft.p99),
    rps: null, errps: null, hitRate: null,
  };
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
    const hits = growth(num(cache.hits), num(cacheBefore.hits));
    const misses = growth(num(cache.misses), num(cacheBefore.misses));
    if (hits !== null && misses !== null && hits + misses > 0) sample.hitRate = (100 * hits) / (hits + misses);
  }
  return sample;
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

function el(tag, { className, text, data } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
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
  show("rps", fmtRate(sample.rps));
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
    ...entries.map(([target, state]) => {
      const known = BREAKER_STATES.includes(state);
      const label = known ? state.replace("_", "-") : String(state);
      return el(
        "li",
        { data: { breaker: target } },
        el("span", { className: "target", text: target }),
        el("span", { className: "badge " + (known ? state : "unknown"), text: label, data: { state: String(state) } }),
      );
    }),
  );
  if (!entries.length) list.append(el("li", { className: "none", text: "no upstream targets used yet" }));
  const count = (state) => entries.filter(([, s]) => s === state).length;
  show("breaker-summary", entries.length ? `${count("open")} open · ${count("half_open")} half-open · ${count("closed")} closed` : "");
}

function renderKeys(keys) {
  const rows = Object.entries(keys).sort(([a], [b]) => a.localeCompare(b));
  document.getElementById("keys-panel").hidden = !rows.length;
  document.getElementById("keys").replaceChildren(
    ...rows.map(([name, key]) =>
      el(
        "tr",
        { data: { key: name } },
        el("td", { text: name }),
        el("td", { className: "num", text: fmtCount(num(obj(key).requests)) }),
        el("td", { className: "num", text: fmtCount(num(obj(key).tokens)) }),
        el("td", { className: "num", text: fmtUsd(num(obj(key).cost_usd)) }),
      ),
    ),
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

function linePoints(key, x, y) {
  const segments = [];
  let current = null;
  for (const sample of history) {
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

function drawChart(chart, now) {
  const node = document.getElementById(chart.id);
  const width = node.clientWidth, height = node.clientHeight;
  if (!width || !height) return;
  const pad = { left: 40, right: 6, top: 8, bottom: 20 };
  const values = history.flatMap((s) => chart.series.map((c) => s[c.key])).filter((v) => v !== null && v !== undefined);
  const peak = chart.max ?? Math.max(0, ...values);
  const step = niceStep(peak > 0 ? peak : 1);
  const top = Math.max(step, Math.ceil(peak / step) * step);
  const x = (t) => pad.left + ((t - (now - WINDOW_MS)) / WINDOW_MS) * (width - pad.left - pad.right);
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
  for (let minutes = 5; minutes >= 0; minutes--) {
    const anchor = minutes === 5 ? "start" : minutes === 0 ? "end" : "middle";
    const label = svg("text", { class: "axis", x: x(now - minutes * 60000), y: height - 4, "text-anchor": anchor });
    label.textContent = minutes ? `-${minutes}m` : "now";
    parts.push(label);
  }
  for (const series of chart.series) {
    const segments = linePoints(series.key, x, y);
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
  drawLegend(chart, node);
}

function drawLegend(chart, node) {
  const caption = node.parentElement.querySelector("figcaption");
  let legend = caption.querySelector(".legend");
  if (!legend) caption.append((legend = el("span", { className: "legend" })));
  const latest = history[history.length - 1] ?? {};
  legend.replaceChildren(
    ...chart.series.map((series) => {
      const dot = el("i");
      dot.style.background = series.color;
      return el("span", {}, dot, `${series.label} ${chart.format(latest[series.key] ?? null)}`);
    }),
  );
}

function drawCharts() {
  const now = Date.now();
  for (const chart of CHARTS) drawChart(chart, now);
}

// -- polling -------------------------------------------------------------------

function remember(sample) {
  history.push(sample);
  while (history.length && history[0].t < sample.t - WINDOW_MS) history.shift();
}

function render(stats) {
  const now = Date.now();
  const sample = sampleOf(stats, now);
  previous = { stats, now };
  remember(sample);
  renderTiles(stats, sample);
  renderProviders(obj(stats.providers));
  renderBreakers(obj(stats.breakers));
  renderKeys(obj(stats.keys));
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

window.addEventListener("resize", drawCharts);
poll();
