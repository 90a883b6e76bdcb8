// The report page. Every number comes from /api/v1 (the same queries as the CLI); the view
// (period, filters, chart stacking) lives in the URL so it can be bookmarked and shared.
"use strict";

// team: through each call's key as it is now (a moved key takes its calls along, as in `report --by team`).
const DIMENSIONS = { model: "model", customer: "customer_id", feature: "feature", key: "key_id", team: "team" };
const FILTERS = ["model", "customer", "feature", "key", "team"];
// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
const DAY = 86400000;
const RECENT_EVERY_MS = 5000;
const BREAKDOWN_ROWS = 50;  // the top groups by cost; the export has them all
// Times are shown in the viewer's zone unless the URL says tz=UTC (the switch in the header); the
// API groups days and hours in the same zone (its tz parameter).
const LOCAL_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

let chart = null;
let recentTimer = null;
const sortState = {};

function readState() {
  const q = new URLSearchParams(location.search);
  return {
    range: q.get("range") || "7d", from: q.get("from"), to: q.get("to"),
    stack: q.get("stack") || "model",
    tz: q.get("tz") || LOCAL_ZONE,
    filters: Object.fromEntries(FILTERS.filter((f) => q.get(f)).map((f) => [f, q.get(f)])),
  };
}

function writeState(state) {
  const q = new URLSearchParams();
  q.set("range", state.range);
  if (state.range === "custom") { q.set("from", state.from); q.set("to", state.to); }
  if (state.stack !== "model") q.set("stack", state.stack);
  if (state.tz !== LOCAL_ZONE) q.set("tz", state.tz);
  for (const [k, v] of Object.entries(state.filters)) q.set(k, v);
  history.pushState(null, "", "?" + q.toString());
  refresh();
}

// The wall-clock fields of an instant in a zone: {year, month (1-12), day, hour, minute, second}.
const formats = new Map();
function wall(instant, tz) {
  if (!formats.has(tz)) {
    formats.set(tz, new Intl.DateTimeFormat("en-US", { timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }));
  }
  const fields = formats.get(tz).formatToParts(instant);
  const get = (type) => Number(fields.find((f) => f.type === type).value);
  return { year: get("year"), month: get("month"), day: get("day"), hour: get("hour"), minute: get("minute"), second: get("second") };
}

// The instant of a wall-clock time in a zone (midnight by default), across DST changes, as the server
// reads a date (Python's fold=0): a time that happens twice is its first; one the clocks skip (midnight
// in Havana or Santiago on the day DST starts) is read at the offset before the change, the instant
// the day begins.
function zoned(year, month, day, tz, hour = 0) {
  const guess = Date.UTC(year, month - 1, day, hour);
  const offset = (t) => { const w = wall(new Date(t), tz); return Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second) - t; };
  const before = offset(guess - DAY), after = offset(guess + DAY);  // no zone changes its clocks twice a day
  const shows = (t) => offset(t) + t === guess;
  if (shows(guess - before)) return guess - before;
  return shows(guess - after) ? guess - after : guess - before;
}

const pad = (n) => String(n).padStart(2, "0");
const dayLabel = (w) => `${w.year}-${pad(w.month)}-${pad(w.day)}`;
const hourLabel = (w) => `${dayLabel(w)} ${pad(w.hour)}:00`;
const timeLabel = (instant, tz) => { const w = wall(instant, tz); return `${dayLabel(w)} ${pad(w.hour)}:${pad(w.minute)}`; };

function period(state, now = new Date()) {
  const today = wall(now, state.tz);
  let since, until = now.getTime();
  switch (state.range) {
    case "today": since = zoned(today.year, today.month, today.day, state.tz); break;
    case "30d": since = until - 30 * DAY; break;
    case "month": since = zoned(today.year, today.month, 1, state.tz); break;
    case "custom": {
      const [fy, fm, fd] = state.from.split("-").map(Number), [ty, tm, td] = state.to.split("-").map(Number);
      since = zoned(fy, fm, fd, state.tz);
      until = zoned(ty, tm, td + 1, state.tz);  // Date.UTC rolls day 32 over into the next month
      break;
    }
    default: since = until - 7 * DAY;
  }
  return { since: new Date(since), until: new Date(until) };
}

function params(state, range, extra = {}) {
  const q = new URLSearchParams();
  q.set("since", range.since.toISOString());
  q.set("until", range.until.toISOString());
  q.set("tz", state.tz);
  for (const [k, v] of Object.entries(state.filters)) q.set(k, v);
  for (const [k, v] of Object.entries(extra)) {
    for (const item of [].concat(v)) q.append(k, item);
  }
  return q.toString();
}

async function api(path) {
  const response = await fetch("/api/v1/" + path, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

// How money is written: the rule of addon/core/money.py (docs/usage.md, "How money and JSON are
// written"), held to the same strings by tests/test_money_everywhere.py. Exact to a millionth of a dollar
// (halves up), at least two decimals or `places` (a column's, from moneyPlaces), "unpriced" for
// an unknown cost. Decimal arithmetic on the number's shortest form, never binary rounding.
const MONEY_PLACES = 6;

function micros(value) {
  const [mantissa, exponent] = Math.abs(value).toExponential().split("e");
  const digits = BigInt(mantissa.replace(".", ""));
  const shift = Number(exponent) - (mantissa.split(".")[1] || "").length + MONEY_PLACES;
  if (shift >= 0) return digits * 10n ** BigInt(shift);
  const divisor = 10n ** BigInt(-shift);
  return (digits * 2n + divisor) / (2n * divisor);
}

function neededPlaces(m) {
  let places = MONEY_PLACES;
  while (places > 2 && m % 10n === 0n) { m /= 10n; places -= 1; }
  return places;
}

function moneyPlaces(values) {
  return Math.max(2, ...values.filter((v) => v !== null && v !== undefined).map((v) => neededPlaces(micros(v))));
}

function money(value, places = 2) {
  if (value === null || value === undefined) return "unpriced";
  const m = micros(value);
  if (m === 0n && value !== 0) return (value < 0 ? "-" : "") + "<$0." + "0".repeat(MONEY_PLACES - 1) + "1";
  const digits = String(m).padStart(MONEY_PLACES + 1, "0");
  const whole = BigInt(digits.slice(0, -MONEY_PLACES)).toLocaleString("en-US");
  const fraction = digits.slice(-MONEY_PLACES).slice(0, Math.max(places, neededPlaces(m)));
  return (value < 0 && m !== 0n ? "-" : "") + "$" + whole + "." + fraction;
}

const count = (n) => (n || 0).toLocaleString("en-US");
// What a call was billed in besides tokens: images generated, seconds of audio, characters spoken,
// and the server-side tools it ran (searches, fetches, file searches, code runs, containers, grounding,
// images made by the image generation tool, a Bedrock guardrail's checks).
const unitsLabel = (c) => [[c.images, "image"], [c.audio_seconds, "s of audio"], [c.characters, "character"],
  [c.web_search_requests, "web search", "web searches"], [c.web_fetch_requests, "web fetch", "web fetches"],
  [c.file_search_calls, "file search", "file searches"], [c.code_executions, "code run"],
  [c.containers, "container"], [c.grounded_prompts, "grounded prompt"],
  [c.image_generation_calls, "image by a tool", "images by a tool"], [c.guardrail_checks, "guardrail check"],
  [c.advisor_calls, "advisor call"]]
  .filter(([n]) => n).map(([n, unit, units]) => ` · ${unit.startsWith("s ") ? Number(n).toFixed(1) + " " + unit : plural(n, unit, units)}`)
  .join("");
// As addon/core/wording.py's plural: 1 call, 2 calls.
const plural = (n, noun, nouns) => count(n) + " " + (n === 1 ? noun : nouns || noun + "s");
const ms = (v) => (v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s");
// The proxy's own time per call (proxy_us): microseconds, milliseconds past 1,000.
const us = (v) => (v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " µs" : (v / 1000).toFixed(1) + " ms");
const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%");
const errorRate = (t) => (t.calls ? t.errors / t.calls : null);
// A group with no value: the keys in no team as the CLI's tables name them (cli/output.py NO_TEAM).
const none = (dimension) => (dimension === "team" ? "(no team)" : "(none)");

// A key as people call it (the API's key_name, as the CLI's reports show it), its id in the tooltip;
// a key that no longer exists has only its id.
function keyName(row) {
  return el("span", { title: `key id ${row.key_id}` }, String(row.key_name ?? row.key_id));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "dataset") Object.assign(node.dataset, v); else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child));
  return node;
}

// lowerIsBetter: true for errors and latency; null for spend and calls, where a rise is neither.
function delta(node, now, before, lowerIsBetter) {
  if (now === null || before === null || before === undefined || before === 0) { node.textContent = "no previous data"; return; }
  const change = (now - before) / before;
  const arrow = change > 0 ? "↑" : change < 0 ? "↓" : "→";
  node.textContent = `${arrow} ${Math.abs(change * 100).toFixed(0)}% vs previous period`;
  const judged = lowerIsBetter !== null && change !== 0;
  node.className = "delta " + (judged ? ((lowerIsBetter ? change < 0 : change > 0) ? "good" : "bad") : "");
}

function showTotals(total, previous) {
  const spend = document.getElementById("total-spend");
  spend.textContent = money(total.cost_usd) + (total.unpriced_calls ? "*" : "");
  spend.dataset.value = total.cost_usd === null ? "" : String(total.cost_usd);
  const calls = document.getElementById("total-calls");
  calls.textContent = count(total.calls);
  calls.dataset.value = String(total.calls);
  document.getElementById("total-errors").textContent = pct(errorRate(total));
  document.getElementById("total-latency").textContent = `${ms(total.p50_latency_ms)} / ${ms(total.p95_latency_ms)}`;
  document.getElementById("total-added").textContent = `${us(total.p50_proxy_us)} / ${us(total.p99_proxy_us)}`;
  delta(document.getElementById("delta-spend"), total.cost_usd, previous.cost_usd, null);
  delta(document.getElementById("delta-calls"), total.calls, previous.calls, null);
  delta(document.getElementById("delta-errors"), errorRate(total), errorRate(previous), true);
  delta(document.getElementById("delta-latency"), total.p50_latency_ms, previous.p50_latency_ms, true);
}

function showWarnings(total, lastHour) {
  const box = document.getElementById("warnings");
  box.replaceChildren();
  const warn = (text) => box.append(el("p", { class: "warning", role: "status" }, "⚠ " + text));
  const unknownModels = total.unpriced_calls - (total.unmetered_calls || 0);
  if (unknownModels) {
    warn(`${plural(unknownModels, "call")} used models without a price; their cost is not in the totals (marked *). ` +
         "Run `aispendtrack prices check` and add them to prices.toml.");
  }
  if (total.unmetered_calls) {
    warn(`${plural(total.unmetered_calls, "call")} went to endpoints the provider bills and AiSpendTrack does not meter; ` +
         "their cost is not in the totals (marked *). `aispendtrack prices check` names them.");
  }
  if (total.calls && total.estimated_calls) {
    const share = total.estimated_calls / total.calls;
    warn(`${share < 0.001 ? "Under 0.1%" : pct(share)} of calls (${count(total.estimated_calls)}) have estimated usage ` +
         "(streams without include_usage, or cut short).");
  }
  const recentRate = errorRate(lastHour), overallRate = errorRate(total);
  if (lastHour.calls >= 5 && recentRate >= 0.05 && recentRate >= 2 * (overallRate || 0)) {
    warn(`Error spike: ${pct(recentRate)} of calls failed in the last hour, against ${pct(overallRate)} over the period.`);
  }
}

function showFilters(state) {
  const box = document.getElementById("filters");
  box.replaceChildren();
  for (const [k, v] of Object.entries(state.filters)) {
    const remove = el("button", { "aria-label": `remove ${k} filter` }, "×");
    remove.addEventListener("click", () => { delete state.filters[k]; writeState(state); });
    box.append(el("span", { class: "chip" }, `${k}: ${v} `, remove));
  }
}

// Every hour or day of the period as the API labels them in tz: an hour's step from `since` finds
// them all (DST days of 23 or 25 hours included), and the period's last instant adds the bucket it
// ends in, which that step misses when the period ends less than an hour into a day (00:30).
function bucketLabels(bucket, range, tz) {
  const label = bucket === "hour" ? hourLabel : dayLabel;
  const instants = [];
  for (let t = range.since.getTime(); t < range.until.getTime(); t += 3600000) instants.push(t);
  instants.push(range.until.getTime() - 1);  // `until` itself is not in the period
  return [...new Set(instants.map((t) => label(wall(new Date(t), tz))))];
}

function showChart(rows, bucket, stackName, range, tz) {
  const labels = bucketLabels(bucket, range, tz);
  const costBy = new Map();
  for (const r of rows) costBy.set(String(r[stackName]), (costBy.get(String(r[stackName])) || 0) + (r.cost_usd || 0));
  const top = [...costBy.entries()].sort((a, b) => b[1] - a[1]).slice(0, 7).map(([name]) => name);
  // Each bar's cost, and its calls of unknown cost: a bar of those alone is "unpriced", not $0.
  const zeros = () => ({ data: new Array(labels.length).fill(0), unpriced: new Array(labels.length).fill(0) });
  const series = new Map(top.map((name) => [name, zeros()]));
  const other = zeros();
  for (const r of rows) {
    const i = labels.indexOf(r[bucket]);
    if (i < 0) continue;
    const target = series.get(String(r[stackName])) || other;
    target.data[i] += r.cost_usd || 0;
    target.unpriced[i] += r.unpriced_calls || 0;
  }
  // Keys by name, as the tables show them (rows by key carry key_name).
  const named = new Map(rows.filter((r) => r.key_name).map((r) => [String(r[stackName]), r.key_name]));
  const datasets = [...series.entries()].map(([name, s], i) => ({ label: name === "null" ? none(stackName) : named.get(name) || name, ...s, backgroundColor: PALETTE[i] }));
  if (other.data.some((v) => v) || other.unpriced.some((v) => v)) datasets.push({ label: "other", ...other, backgroundColor: "#999999" });
  const shown = (c) => {
    const unknown = c.dataset.unpriced[c.dataIndex];
    if (!unknown) return money(c.parsed.y);
    return c.parsed.y ? `${money(c.parsed.y)}* (+ ${plural(unknown, "unpriced call")})` : `unpriced (${plural(unknown, "call")})`;
  };
  const config = {
    type: "bar",
    data: { labels, datasets },
    options: {
      animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
      scales: { x: { stacked: true }, y: { stacked: true, ticks: { callback: (v) => "$" + Number(v.toPrecision(3)) } } },
      plugins: {
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${shown(c)}` } },
        legend: NARROW.matches ? { position: "bottom", labels: { boxWidth: 12, padding: 6, font: { size: 11 } } } : {},
      },
      onResize: (c) => requestAnimationFrame(() => keepPlotHeight(c)),
    },
  };
  if (chart) chart.destroy();
  chart = new Chart(document.getElementById("chart"), config);
  keepPlotHeight(chart);
}

// On a phone the legend wraps to many lines, and Chart.js takes them from the bars: the chart's box
// grows by what the legend and axes take, so the bars keep MIN_PLOT pixels at any width.
const NARROW = matchMedia("(max-width: 600px)");
const MIN_PLOT = 200;
function keepPlotHeight(c) {
  if (c !== chart || !c.chartArea) return;  // replaced by a newer chart meanwhile
  const box = c.canvas.parentElement;
  const needed = `${Math.ceil(c.height - (c.chartArea.bottom - c.chartArea.top) + MIN_PLOT)}px`;
  if (box.style.minHeight !== needed) { box.style.minHeight = needed; c.resize(); }
}

function showBreakdown(table, rows, state) {
  const dimension = table.dataset.dimension;
  const key = DIMENSIONS[dimension];
  const places = moneyPlaces(rows.map((r) => r.cost_usd));
  const columns = [
    // By key: the key's name (with its id when another key shares it), as `aispendtrack report --by key`.
    [dimension, (r) => (r[key] === null ? none(dimension) : dimension === "key" ? keyName(r) : String(r[key])),
      (r) => String(r.key_name ?? r[key])],
    ["calls", (r) => count(r.calls), (r) => r.calls],
    ["cost", (r) => money(r.cost_usd, places) + (r.unpriced_calls && r.cost_usd !== null ? "*" : ""), (r) => r.cost_usd ?? -1],
    ["share", (r) => pct(r.share), (r) => r.share ?? -1],
    ["p50", (r) => ms(r.p50_latency_ms), (r) => r.p50_latency_ms ?? -1],
    ["errors", (r) => count(r.errors), (r) => r.errors],
  ];
  const sort = sortState[dimension] || { column: 2, descending: true };
  const sorted = [...rows].sort((a, b) => {
    const x = columns[sort.column][2](a), y = columns[sort.column][2](b);
    return (x < y ? -1 : x > y ? 1 : 0) * (sort.descending ? -1 : 1);
  });
  const head = el("tr", {}, ...columns.map(([name], i) => {
    const th = el("th", { class: i ? "num" : "", scope: "col", "aria-sort": i === sort.column ? (sort.descending ? "descending" : "ascending") : "none" },
      name + (i === sort.column ? (sort.descending ? " ▼" : " ▲") : ""));
    th.addEventListener("click", () => {
      sortState[dimension] = { column: i, descending: sort.column === i ? !sort.descending : true };
      showBreakdown(table, rows, state);
    });
    return th;
  }));
  const body = sorted.map((r) => {
    const tr = el("tr", { class: r[key] === null ? "" : "clickable", dataset: { value: String(r[key]) } },
      ...columns.map(([, cell], i) => el("td", { class: i ? "num" : "" }, cell(r))));
    if (r[key] !== null) {
      tr.addEventListener("click", () => { state.filters[dimension] = String(r[key]); writeState(state); });
    }
    return tr;
  });
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...(body.length ? body : [el("tr", {}, el("td", { colspan: "6" }, "No calls"))])));
  fit(table);
}

async function showRecent(state) {
  const table = document.getElementById("recent");
  // Open-ended but for a custom period: calls made after the page loaded must show up too.
  // A custom period has ended: its own end bounds them.
  const range = period(state);
  const q = new URLSearchParams({ limit: "15", since: range.since.toISOString(),
    ...(state.range === "custom" ? { until: range.until.toISOString() } : {}), ...state.filters });
  const page = await api("calls?" + q.toString());
  const seen = new Set([...table.querySelectorAll("tbody tr")].map((tr) => tr.dataset.id));
  const head = el("tr", {}, ...["time", "key", "provider", "model", "in", "out", "cost", "latency", "status", "customer", "feature"]
    .map((h, i) => el("th", { class: [4, 5, 6, 7].includes(i) ? "num" : "", scope: "col" }, h)));
  const places = moneyPlaces(page.calls.map((c) => c.cost_usd));
  const rows = page.calls.map((c) => el("tr", { dataset: { id: c.id }, class: seen.size && !seen.has(c.id) ? "new" : "" },
    el("td", {}, timeLabel(new Date(c.ts), state.tz)), el("td", {}, keyName(c)), el("td", {}, c.provider),
    el("td", {}, (c.model || "–") + unitsLabel(c)), el("td", { class: "num" }, count(c.input_tokens)), el("td", { class: "num" }, count(c.output_tokens)),
    el("td", { class: "num" }, money(c.cost_usd, places)), el("td", { class: "num" }, ms(c.latency_ms)),
    el("td", {}, `${c.status ?? "–"}${c.outcome === "completed" ? "" : " " + c.outcome}`),
    el("td", {}, c.customer_id || "–"), el("td", {}, c.feature || "–")));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "11" }, "No calls yet"))])));
  fit(table);
  return seen.size ? page.calls.filter((c) => !seen.has(c.id)).length : 0;
}

// One wording for admins and keys: "all calls (covers all keys)", "key:3", "customer:acme of key 3",
// "customer:acme on all keys".
function budgetLabel(b) {
  if (b.scope === "all") return "all calls (covers all keys)";
  const owner = b.key_id !== null ? ` of key ${b.key_id}` : b.scope === "customer" || b.scope === "feature" ? " on all keys" : "";
  return `${b.scope}:${b.scope_value}${owner}`;
}

function showBudgets(budgets) {
  const table = document.getElementById("budget-table");
  document.getElementById("no-budgets").hidden = budgets.length > 0;
  // A key is not shown the spend of a budget over all keys (null): that is other keys' spend too.
  // Calls of unknown cost are not in the spend: named beside it, so it never reads as complete.
  const unknown = (n) => n ? ` + ${count(n)} unpriced` : "";
  const used = (spent, limit, unpriced) => spent === null ? (limit === null ? "–" : `limit ${money(limit)} (all keys' spend not shown)`)
    : limit === null ? money(spent) + unknown(unpriced)
    : `${money(spent)}${unknown(unpriced)} of ${money(limit)} (${pct(spent / limit)})${spent >= limit ? " — over" : ""}`;
  const head = el("tr", {}, ...["scope", "today", "this month", "blocks calls"].map((h, i) => el("th", { class: i === 1 || i === 2 ? "num" : "", scope: "col" }, h)));
  const rows = budgets.map((b) => el("tr", { class: (b.daily_usd !== null && b.spent_today_usd >= b.daily_usd) || (b.monthly_usd !== null && b.spent_this_month_usd >= b.monthly_usd) ? "over" : "" },
    el("td", {}, budgetLabel(b)),
    el("td", { class: "num" }, used(b.spent_today_usd, b.daily_usd, b.unpriced_calls_today)),
    el("td", { class: "num" }, used(b.spent_this_month_usd, b.monthly_usd, b.unpriced_calls_this_month)),
    el("td", {}, b.block ? "yes" : "no")));
  table.replaceChildren(...(budgets.length ? [el("thead", {}, head), el("tbody", {}, ...rows)] : []));
  if (budgets.length) document.getElementById("budget-zone").textContent = budgets[0].tz;
  fit(table);
}

function showReconciliation(found) {
  const table = document.getElementById("reconciliation-table");
  document.getElementById("no-reconciliation").hidden = found.length > 0;
  const head = el("tr", {}, ...["provider", "checked up to", "tracked", "provider says", "difference", "days that differ"]
    .map((h, i) => el("th", { class: [2, 3, 4].includes(i) ? "num" : "", scope: "col" }, h)));
  const rows = found.map((r) => el("tr", { class: r.days_differing ? "over" : "" },
    el("td", {}, r.provider), el("td", {}, r.until.slice(0, 10)),
    el("td", { class: "num" }, money(r.ours_usd)), el("td", { class: "num" }, money(r.theirs_usd)),
    el("td", { class: "num" }, `${money(r.difference_usd)}${r.difference_percent === null ? "" : ` (${r.difference_percent.toFixed(1)}%)`}`),
    el("td", {}, r.lines.length ? r.lines.map((l) => `${l.bucket.slice(0, 10)} ${l.model || ""} ${l.status}`).join(", ") : "none")));
  table.replaceChildren(...(found.length ? [el("thead", {}, head), el("tbody", {}, ...rows)] : []));
  fit(table);
}

// Each cell gets its column's name (for the stacked layout); a table wider than its panel stacks.
function fit(table) {
  const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent.replace(/ [▲▼]$/, ""));
  table.querySelectorAll("tbody tr").forEach((tr) => [...tr.children].forEach((td, i) => {
    if (names[i] && td.colSpan === 1) td.dataset.label = names[i];
  }));
  table.classList.remove("stacked");
  if (table.scrollWidth > table.parentElement.clientWidth + 1) table.classList.add("stacked");
}

function showExports(state) {
  const q = params(state, period(state));
  document.getElementById("export-csv").href = "/api/v1/export?format=csv&" + q;
  document.getElementById("export-json").href = "/api/v1/export?format=json&" + q;
}

async function refresh() {
  const state = readState();
  const range = period(state);
  document.querySelectorAll(".ranges button[data-range]").forEach((b) => b.classList.toggle("active", b.dataset.range === state.range));
  document.getElementById("stack").value = state.stack;
  if (state.range === "custom") {  // a bookmarked period shows its dates
    document.getElementById("custom-from").value = state.from;
    document.getElementById("custom-to").value = state.to;
  }
  document.getElementById("zone-name").textContent = state.tz;
  const zoneSwitch = document.getElementById("zone-switch");
  zoneSwitch.hidden = LOCAL_ZONE === "UTC";
  zoneSwitch.textContent = state.tz === "UTC" ? "Local time" : "UTC";
  zoneSwitch.setAttribute("aria-pressed", String(state.tz === "UTC"));
  document.getElementById("period").textContent =
    `${timeLabel(range.since, state.tz)} to ${timeLabel(range.until, state.tz)} (${state.tz})`;
  showFilters(state);
  showExports(state);
  const parts = [...summary(state, range), showRecent(state)];
  const failed = (await Promise.allSettled(parts)).find((p) => p.status === "rejected");
  if (failed) {
    document.getElementById("warnings").append(el("p", { class: "warning", role: "alert" }, "Could not load: " + failed.reason.message));
  }
  document.body.dataset.loaded = location.search;  // for tests and scripts: this view is fully drawn
}

// Everything but the recent calls: drawn at load, and again whenever new calls arrive.
function summary(state, range) {
  const span = range.until - range.since;
  const previous = { since: new Date(range.since - span), until: range.since };
  const bucket = span <= 2 * DAY ? "hour" : "day";
  // The period's last hour, or less of it: calls before the period are not the period's spike.
  const hourAgo = { since: new Date(Math.max(range.since.getTime(), range.until - 3600000)), until: range.until };
  const totals = Promise.all([
    api("report/total?" + params(state, range)),
    api("report/total?" + params(state, previous)),
    api("report/total?" + params(state, hourAgo)),
  ]).then(([total, before, lastHour]) => { showTotals(total, before); showWarnings(total, lastHour); });
  // Each part is drawn as soon as its data arrives, so the totals never wait for a big table.
  return [
    totals,
    api("report?" + params(state, range, { by: [bucket, state.stack], percentiles: "false" }))  // costs alone
      .then((rows) => showChart(rows, bucket, DIMENSIONS[state.stack] || state.stack, range, state.tz)),
    ...Object.keys(DIMENSIONS).map((d) => api("report?" + params(state, range, { by: d, limit: BREAKDOWN_ROWS }))
      .then((rows) => showBreakdown(document.getElementById("by-" + d), rows, state))),
    api("budgets").then(showBudgets),
    ...(document.getElementById("reconciliation") ? [api("reconciliation").then(showReconciliation)] : []),
  ];
}

function pollRecent() {
  clearInterval(recentTimer);
  recentTimer = setInterval(async () => {
    const state = readState();
    try {
      // New calls change the totals, the chart and the tables too (a period that ended stays as it is).
      if (await showRecent(state) && state.range !== "custom") {
        await Promise.allSettled(summary(state, period(state)));
        document.body.dataset.refreshed = String(Date.now());
      }
    } catch (error) { /* the next tick tries again */ }
  }, RECENT_EVERY_MS);
}

document.querySelectorAll(".ranges button[data-range]").forEach((button) => button.addEventListener("click", () => {
  const state = readState();
  state.range = button.dataset.range;
  if (state.range === "custom") {
    state.from = document.getElementById("custom-from").value;
    state.to = document.getElementById("custom-to").value;
    if (!state.from || !state.to) return;
  }
  writeState(state);
}));
document.getElementById("stack").addEventListener("change", (event) => {
  const state = readState();
  state.stack = event.target.value;
  writeState(state);
});
document.getElementById("zone-switch").addEventListener("click", () => {
  const state = readState();
  state.tz = state.tz === "UTC" ? LOCAL_ZONE : "UTC";
  writeState(state);
});
let resized = null;
window.addEventListener("resize", () => {
  clearTimeout(resized);
  resized = setTimeout(() => document.querySelectorAll("main table").forEach(fit), 100);
});
window.addEventListener("popstate", refresh);
refresh();
pollRecent();
