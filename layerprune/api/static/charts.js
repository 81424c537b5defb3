// Inline SVG charts: the training loss, the per-layer importance scores and a study's Pareto plots.
// Each returns a DOM node; no chart library (the page loads nothing from outside this server).

import { el, svgEl } from "./dom.js";
import { formatValue, significant } from "./format.js";

const note = (text) => el("p", { class: "muted chart-note", text });

// Evenly spaced round-ish axis ticks between lo and hi.
function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) return [lo];
  return Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
}

// points: [{x: step, y: loss, stage}] from the job's progress events (every step the worker reported).
export function lossCurve(points) {
  const pts = points.filter((p) => typeof p.y === "number" && isFinite(p.y));
  if (pts.length < 2) return note(pts.length ? "one training step reported so far" : "no training loss reported (this job does not heal, or has not started healing)");
  const W = 720, H = 200, left = 48, right = 10, top = 10, bottom = 30;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => left + (W - left - right) * ((x - x0) / ((x1 - x0) || 1));
  const sy = (y) => top + (H - top - bottom) * (1 - (y - y0) / ((y1 - y0) || 1));
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "training loss by step", class: "loss" });
  svg.append(svgEl("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }));
  for (const t of ticks(y0, y1)) {
    svg.append(svgEl("text", { x: left - 4, y: sy(t) + 3, "text-anchor": "end" }, significant(t)));
    svg.append(svgEl("line", { x1: left, x2: W - right, y1: sy(t), y2: sy(t), class: "grid" }));
  }
  for (const t of ticks(x0, x1)) {
    svg.append(svgEl("text", { x: sx(t), y: H - bottom + 14, "text-anchor": "middle" }, String(Math.round(t))));
  }
  svg.append(svgEl("text", { x: (W + left) / 2, y: H - 2, "text-anchor": "middle" }, "step"));
  svg.append(svgEl("polyline", { points: pts.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" "), class: "line" }));
  for (const p of pts) {
    const dot = svgEl("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5, class: "pt", "data-step": p.x, "data-loss": p.y });
    dot.append(svgEl("title", {}, `step ${p.x}: loss ${formatValue("score", p.y)}`));
    svg.append(dot);
  }
  const first = pts[0].y, last = pts[pts.length - 1].y;
  return el("div", {}, svg, el("div", { class: "legend" },
    el("span", { text: `loss ${formatValue("score", first)} → ${formatValue("score", last)} over ${pts.length} reported steps` })));
}

// Metrics that remove layers by position or by hand compute no importance scores.
const UNSCORED = {
  reverse_order: "reverse order removes the last layers by position: it computes no importance scores",
  random: "random removal draws layers with the seed: it computes no importance scores",
  manual: "the layers were named in the spec: no importance scores were computed",
};

export function layerChart(scores, removed, numLayers, metric) {
  const n = (scores && scores.length) || numLayers || 0;
  if (!n) return note("no layer scores yet");
  const removedSet = new Set(removed || []);
  const vals = (scores || []).filter((v) => typeof v === "number" && isFinite(v));
  // Without scores the bars only mark positions: a short strip, not an empty plot.
  const W = 720, H = vals.length ? 220 : 70, left = 48, bottom = 28, top = 10;
  const bw = (W - left - 6) / n;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "per-layer importance scores" });
  svg.append(svgEl("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: "#c8cdd8" }));
  // Perplexity-style scores span orders of magnitude (layer 0: 38,680 vs 24 elsewhere): a log scale.
  const logScale = vals.length > 0 && vals.every((v) => v > 0) && Math.max(...vals) / Math.min(...vals) > 100;
  const tf = (v) => (logScale ? Math.log10(v) : v);
  const lo = vals.length ? Math.min(0, ...vals.map(tf)) : 0;
  const hi = vals.length ? Math.max(...vals.map(tf)) : 1;
  const y = (v) => top + (H - top - bottom) * (1 - (tf(v) - lo) / ((hi - lo) || 1));
  if (vals.length) {
    for (const t of [lo, (lo + hi) / 2, hi]) {
      svg.append(svgEl("text", { x: left - 4, y: top + (H - top - bottom) * (1 - (t - lo) / ((hi - lo) || 1)) + 3,
        "text-anchor": "end" }, logScale ? "1e" + t.toFixed(1) : significant(t)));
    }
  }
  for (let i = 0; i < n; i++) {
    const v = scores ? scores[i] : null;
    const isRemoved = removedSet.has(i);
    const x = left + i * bw + bw * 0.12, w = bw * 0.76;
    let bar;
    if (typeof v === "number" && isFinite(v)) {
      const yy = y(v), base = y(logScale ? Math.pow(10, lo) : Math.max(lo, 0));
      bar = svgEl("rect", { x, y: Math.min(yy, base), width: w, height: Math.max(1, Math.abs(base - yy)),
        class: "bar " + (isRemoved ? "removed" : "kept"), "data-layer": i });
    } else {  // unscored: a stub, so the removed layers still show where they are
      bar = svgEl("rect", { x, y: H - bottom - 6, width: w, height: 6, class: "bar " + (isRemoved ? "removed" : "na"), "data-layer": i });
    }
    bar.append(svgEl("title", {}, `layer ${i}: ${typeof v === "number" ? v : "no score"}${isRemoved ? " (removed)" : ""}`));
    svg.append(bar);
    if (isRemoved) svg.append(svgEl("text", { x: x + w / 2, y: H - bottom + 22, "text-anchor": "middle", class: "removed-mark", fill: "#c23b3b" }, "×"));
    if (n <= 40 || i % 5 === 0) svg.append(svgEl("text", { x: x + w / 2, y: H - bottom + 11, "text-anchor": "middle" }, String(i)));
  }
  const box = el("div", {}, svg, el("div", { class: "legend" },
    el("span", {}, el("i", { class: "swatch kept" }), "kept"),
    el("span", {}, el("i", { class: "swatch removed" }), "removed (×)"),
    el("span", { text: logScale ? "log scale" : "" })));
  if (!vals.length) {
    box.prepend(note(UNSCORED[metric] || ("the " + (metric || "selection") + " metric reported no layer scores") +
      "; the bars only mark which layers were removed."));
  }
  return box;
}

// A study's trade-off: quality (y) against parameters or speed-up (x). points: [{id, label, x, y,
// front, baseline, recommended, href}]; the front is joined by a line, each point links to its job.
export function paretoChart({ points, xLabel, yLabel, xFormat, yFormat, higherIsBetter, ariaLabel }) {
  const pts = points.filter((p) => typeof p.x === "number" && typeof p.y === "number");
  if (!pts.length) return note("no finished candidates with this figure yet");
  const W = 520, H = 300, left = 58, right = 30, top = 14, bottom = 40;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const pad = (lo, hi) => { const d = (hi - lo) || Math.abs(hi) || 1; return [lo - d * 0.08, hi + d * 0.08]; };
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const sx = (x) => left + (W - left - right) * ((x - x0) / (x1 - x0));
  const sy = (v) => top + (H - top - bottom) * (1 - (v - y0) / (y1 - y0));
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": ariaLabel, class: "pareto" });
  svg.append(svgEl("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }));
  svg.append(svgEl("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }));
  for (const t of ticks(x0, x1, 3)) svg.append(svgEl("text", { x: sx(t), y: H - bottom + 14, "text-anchor": "middle" }, xFormat(t)));
  for (const t of ticks(y0, y1, 3)) svg.append(svgEl("text", { x: left - 4, y: sy(t) + 3, "text-anchor": "end" }, yFormat(t)));
  svg.append(svgEl("text", { x: (W + left) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, xLabel));
  svg.append(svgEl("text", { x: 12, y: (H - bottom) / 2, "text-anchor": "middle", class: "axis-label",
    transform: `rotate(-90 12 ${(H - bottom) / 2})` }, yLabel + (higherIsBetter ? " (higher is better)" : " (lower is better)")));
  const front = pts.filter((p) => p.front).sort((a, b) => a.x - b.x);
  if (front.length > 1) svg.append(svgEl("polyline", { points: front.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), class: "front-line" }));
  for (const p of pts) {
    const cls = ["pt", p.front ? "front" : "", p.baseline ? "baseline" : "", p.recommended ? "recommended" : ""].join(" ").trim();
    const mark = p.baseline
      ? svgEl("rect", { x: sx(p.x) - 5, y: sy(p.y) - 5, width: 10, height: 10, class: cls, "data-job": p.id || "" })
      : svgEl("circle", { cx: sx(p.x), cy: sy(p.y), r: p.recommended ? 7 : 5, class: cls, "data-job": p.id || "" });
    mark.append(svgEl("title", {}, `${p.label}: ${yLabel} ${yFormat(p.y)}, ${xLabel} ${xFormat(p.x)}${p.front ? " (on the front)" : ""}`));
    if (p.href) {
      const a = svgEl("a", { href: p.href, class: "pt-link" });
      a.append(mark);
      svg.append(a);
    } else {
      svg.append(mark);
    }
  }
  return el("div", {}, svg, el("div", { class: "legend" },
    el("span", {}, el("i", { class: "swatch front" }), "Pareto front"),
    el("span", {}, el("i", { class: "swatch other" }), "other candidates"),
    el("span", {}, el("i", { class: "swatch baseline" }), "baseline (unpruned)"),
    el("span", {}, el("i", { class: "swatch recommended" }), "recommended")));
}
