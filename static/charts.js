// Small time-series line charts in plain SVG, for the dashboard.
//
// Plain SVG rather than a vendored chart library: the dashboard needs only
// lines over a shared time axis, a dashed reference (a memory limit) and a
// legend, which is ~100 lines here, works offline, and brings no licence or
// update chore.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600, HEIGHT = 200;
const MARGIN = { left: 52, right: 10, top: 10, bottom: 22 };
export const PALETTE = ["#1f77b4", "#ff9f1c", "#2a9d8f", "#8e44ad", "#f4a261", "#5c6f82", "#d62d7b", "#7cb518"];

const colours = new Map();
/** A stable colour per name (models and processes keep theirs across charts). */
export function colourOf(name) {
  if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
  return colours.get(name);
}

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text != null) node.textContent = text;
  return node;
}

// 1, 2, 2.5 or 5 times a power of ten, at least `value`: round tick steps.
function niceCeil(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((v) => v >= value * (1 - 1e-9));
}

/**
 * Draws `series` into `figure` (a <figure> holding an <svg> and a .legend).
 * series: [{name, points: [[unixSeconds, value|null], ...], colour?, dashed?, limit?, legend?, label?}]
 * (`label`: the legend's text when it should say more than the name.)
 * options: {spanSeconds, now, format(value) -> axis text, minMax, empty}
 */
export function lineChart(figure, series, { spanSeconds = 300, now = Date.now() / 1000, format = String,
  minMax = 1, empty = "No data yet." } = {}) {
  const svg = figure.querySelector("svg");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("role", "img");
  const plotW = WIDTH - MARGIN.left - MARGIN.right, plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v != null);
  const TICKS = 4;
  const step = niceCeil(Math.max(minMax, ...values) / TICKS);
  const yMax = step * TICKS;
  const x = (t) => MARGIN.left + plotW * (1 - (now - t) / spanSeconds);
  const y = (v) => MARGIN.top + plotH * (1 - v / yMax);
  const nodes = [];

  const axis = el("g", { class: "axis" });
  for (let i = 0; i <= TICKS; i += 1) {
    const value = step * i;
    axis.append(el("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(value), y2: y(value) }),
      el("text", { x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, format(value)));
  }
  const minutes = Math.round(spanSeconds / 60);
  for (let m = 0; m <= minutes; m += 1) {
    axis.append(el("text", { x: x(now - m * 60), y: HEIGHT - 6, "text-anchor": m === 0 ? "end" : "middle" },
      m === 0 ? "now" : `−${m} min`));
  }
  nodes.push(axis);

  for (const s of series) {
    // A null value breaks the line (the process or model was not reporting).
    let d = "", pen = "M";
    const latest = s.points.filter((p) => p[1] != null).at(-1);
    if (s.limit && latest) {  // a limit is a level: drawn across the whole chart at its current value
      d = `M${MARGIN.left},${y(latest[1]).toFixed(1)}L${WIDTH - MARGIN.right},${y(latest[1]).toFixed(1)}`;
    }
    for (const [t, v] of s.limit ? [] : s.points) {
      if (v == null || now - t > spanSeconds) { pen = "M"; continue; }
      d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
    }
    if (!d) continue;
    nodes.push(el("path", {
      d, class: s.limit ? "line limit" : "line", stroke: s.colour || colourOf(s.name),
      "stroke-dasharray": s.dashed || s.limit ? "5 4" : "none", "data-series": s.name,
    }));
  }
  if (!values.length) {
    nodes.push(el("text", { class: "empty", x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" }, empty));
  }
  svg.replaceChildren(...nodes);

  const legend = figure.querySelector(".legend");
  if (legend) {
    legend.replaceChildren(...series.filter((s) => s.legend !== false).map((s) => {
      const item = document.createElement("span");
      item.textContent = s.label || s.name;
      item.style.setProperty("--swatch", s.colour || colourOf(s.name));
      if (s.dashed || s.limit) item.className = "dashed";
      if (s.limit) item.style.setProperty("--swatch", "var(--bad)");
      return item;
    }));
  }
}

/** Bytes as "12.3 MB" / "1.2 GB". */
export function bytes(value) {
  if (value >= 1e9) return `${(value / 1e9).toFixed(value >= 1e10 ? 0 : 1)} GB`;
  if (value >= 1e6) return `${(value / 1e6).toFixed(value >= 1e8 ? 0 : 1)} MB`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(0)} kB`;
  return `${Math.round(value)} B`;
}
