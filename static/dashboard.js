// The dashboard: joins the `monitor` room, where every process sends its
// status each second (through the message queue, so one page sees them all)
// and a copy of every prediction. The page keeps the last five minutes of
// samples, bounded, and draws them with charts.js.
import { io } from "/predictor/socket.io.esm.js";
import { bytes, colourOf, lineChart } from "./charts.js";

const SPAN_SECONDS = 300;        // what the charts show
const STALE_SECONDS = 10;        // a process silent this long is gone
const MAX_POINTS = SPAN_SECONDS + 60;

const $ = (id) => document.getElementById(id);
const byProcess = new Map();     // process id -> its latest status
const history = new Map();       // series key -> [[unix seconds, value|null], ...]
const live = new Map();          // model -> latest prediction summary

// With access control on, open /dashboard?token=ADMIN_TOKEN.
const token = new URLSearchParams(location.search).get("token");
const socket = io({ transports: ["websocket", "polling"], auth: token ? { token } : undefined });
const connection = (state, on = false) => { $("connection").textContent = state; $("connection").classList.toggle("on", on); };
socket.on("connect", () => { connection("● live", true); socket.emit("monitor", {}); });
socket.on("disconnect", () => connection("reconnecting…"));
socket.on("connect_error", (err) => connection(`cannot connect: ${err.message}`));
socket.on("error", (err) => connection(`${err.code}: ${err.message}`));
socket.on("status", (status) => { byProcess.set(status.process, { ...status, seenAt: Date.now() / 1000 }); renderTables(); });
socket.on("prediction", (p) => {
  const top = p.labels[0];
  live.set(p.model, `${p.model}: ${top.label} ${(top.score * 100).toFixed(0)}% (${p.timing.total_ms.toFixed(1)} ms, ${p.process})`);
  $("live").textContent = [...live.values()].join(" · ");
});

const shortName = (process) => (process.length > 22 ? `…${process.slice(-21)}` : process);

function statuses() {
  const now = Date.now() / 1000;
  for (const [key, s] of byProcess) if (now - s.seenAt > STALE_SECONDS) byProcess.delete(key);
  return [...byProcess.values()];
}

// One sample per second of every series; a series not reported this time
// gets a null (a gap in its line) rather than a line drawn across the silence.
function sample() {
  const now = Date.now() / 1000;
  const values = new Map();
  const perModel = new Map();
  const all = statuses();
  for (const s of all) {
    for (const m of s.models) {
      const agg = perModel.get(m.name) || { fps: 0, queue: 0, p50Sum: 0, weight: 0, p95: null };
      agg.fps += m.fps || 0;
      agg.queue += m.queue_depth || 0;
      if (m.latency_ms) {
        // Across processes: p50 weighted by answers, p95 the worst process's.
        agg.p50Sum += m.latency_ms.p50 * m.latency_ms.count;
        agg.weight += m.latency_ms.count;
        agg.p95 = Math.max(agg.p95 ?? 0, m.latency_ms.p95);
      }
      perModel.set(m.name, agg);
    }
    const memory = s.memory;
    if (memory && memory.rss_bytes != null) {
      values.set(`memory|${s.process}`, memory.rss_bytes);
      if (memory.limit_bytes) values.set(`limit|${s.process}`, memory.limit_bytes);
    } else {
      values.set(`models|${s.process}`, s.models.reduce((n, m) => n + (m.memory_bytes || 0), 0));
    }
  }
  for (const [model, agg] of perModel) {
    values.set(`fps|${model}`, agg.fps);
    values.set(`queue|${model}`, agg.queue);
    values.set(`p50|${model}`, agg.weight ? agg.p50Sum / agg.weight : null);
    values.set(`p95|${model}`, agg.p95);
  }
  for (const key of new Set([...history.keys(), ...values.keys()])) {
    const points = history.get(key) || [];
    points.push([now, values.has(key) ? values.get(key) : null]);
    while (points.length && (points.length > MAX_POINTS || now - points[0][0] > SPAN_SECONDS)) points.shift();
    if (points.every((p) => p[1] == null)) history.delete(key);
    else history.set(key, points);
  }
  $("total-fps").textContent = [...perModel.values()].reduce((n, a) => n + a.fps, 0).toFixed(1);
  draw(now, all);
}

function seriesOf(kind) {
  return [...history].filter(([key]) => key.startsWith(`${kind}|`)).map(([key, points]) => [key.slice(kind.length + 1), points]);
}

function draw(now, all) {
  const common = { now, spanSeconds: SPAN_SECONDS };
  lineChart($("chart-fps"), seriesOf("fps").map(([model, points]) => ({ name: model, points })),
    { ...common, format: (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1)), empty: "No predictions yet." });
  lineChart($("chart-latency"), [
    ...seriesOf("p50").map(([model, points]) => ({ name: model, points, colour: colourOf(model) })),
    ...seriesOf("p95").map(([model, points]) => ({ name: `${model} p95`, points, colour: colourOf(model), dashed: true, legend: false })),
  ], { ...common, format: (v) => `${v >= 10 ? v.toFixed(0) : v.toFixed(1)}`, empty: "No predictions yet." });
  const hasRss = seriesOf("memory").length > 0;
  // The legend says the current figures: with a large limit the line sits low.
  const memoryOf = new Map(all.filter((s) => s.memory).map((s) => [s.process, s.memory]));
  const rssLabel = (process) => {
    const m = memoryOf.get(process);
    if (!m || m.rss_bytes == null) return shortName(process);
    const share = m.limit_bytes ? ` (${((100 * m.rss_bytes) / m.limit_bytes).toFixed(1)}% of ${bytes(m.limit_bytes)})` : "";
    return `${shortName(process)}: ${bytes(m.rss_bytes)}${share}`;
  };
  const limitLabel = (process) => {
    const m = memoryOf.get(process);
    return `limit ${shortName(process)}${m && m.limit_source ? ` (from ${m.limit_source})` : ""}`;
  };
  lineChart($("chart-memory"), [
    ...seriesOf("memory").map(([process, points]) => ({ name: shortName(process), label: rssLabel(process), points, colour: colourOf(process) })),
    ...seriesOf("limit").map(([process, points]) => ({ name: `limit ${shortName(process)}`, label: limitLabel(process), points, limit: true })),
    ...seriesOf("models").map(([process, points]) => ({ name: `models ${shortName(process)}`, points, colour: colourOf(process) })),
  ], { ...common, format: bytes, minMax: 1e6, empty: "No process reporting." });
  const limited = all.some((s) => s.memory && s.memory.limit_bytes);
  $("memory-note").textContent = hasRss
    ? (limited ? "resident memory; dashed red: the process's limit" : "resident memory; no limit set")
    : "models' memory only: the processes report no resident memory";
  lineChart($("chart-queue"), seriesOf("queue").map(([model, points]) => ({ name: model, points })),
    { ...common, format: (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)), minMax: 4, empty: "No models loaded." });
}

function renderTables() {
  const all = statuses();
  $("processes").textContent = all.length;
  $("clients").textContent = all.reduce((n, s) => n + s.connected_clients, 0);
  $("cache").textContent = bytes(all.reduce((n, s) => Math.max(n, s.cache_bytes), 0));
  const rows = all.flatMap((s) => s.models.map((m) => [s.process, m.name, m.state, m.version || "",
    m.runtime || "", bytes(m.memory_bytes), m.queue_depth, m.fps,
    m.latency_ms ? `${m.latency_ms.p50.toFixed(1)} / ${m.latency_ms.p95.toFixed(1)} ms` : "–"]));
  document.querySelector("#models tbody").replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    cells.forEach((c) => { const td = document.createElement("td"); td.textContent = c; tr.append(td); });
    return tr;
  }));
  const errors = all.flatMap((s) => s.recent_errors.map((e) => ({ ...e, process: s.process })))
    .sort((a, b) => b.at - a.at).slice(0, 20);
  const list = $("errors");
  if (!errors.length) {
    const none = document.createElement("li");
    none.className = "none";
    none.textContent = all.length ? "No errors reported." : "No process reporting yet.";
    list.replaceChildren(none);
    return;
  }
  list.replaceChildren(...errors.map((e) => {
    const li = document.createElement("li");
    const at = document.createElement("time");
    at.dateTime = new Date(e.at * 1000).toISOString();
    at.textContent = new Date(e.at * 1000).toLocaleTimeString();
    const code = document.createElement("code");
    code.textContent = e.code;
    const where = document.createElement("span");
    where.textContent = `${e.model} · ${shortName(e.process)}`;
    const message = document.createElement("span");
    message.className = "message-text";
    message.textContent = e.message;
    li.append(at, code, where, message);
    return li;
  }));
}

setInterval(sample, 1000);
sample();
