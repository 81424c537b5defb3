// Studies: the list, and one study's trade-off (quality against parameters and against speed-up,
// Pareto fronts marked, every candidate a link to its job) with the recommendation sentence.
// Built against GET /v1/studies and GET /v1/studies/{id} (docs/contract.md).

import { $, el, progressBar } from "./dom.js";
import { field, fmtTime, formatValue } from "./format.js";
import { paretoChart } from "./charts.js";

export function renderStudies(studies) {
  const body = $("#studies tbody");
  body.replaceChildren();
  for (const s of studies) {
    const p = s.progress || {};
    const rec = s.recommendation ? (s.candidates || []).find((c) => c.job_id === s.recommendation.job_id) : null;
    const tr = el("tr", { "data-id": s.id },
      el("td", { class: "mono id", text: s.id }),
      el("td", {}, el("span", { class: "badge " + s.status, text: s.status })),
      el("td", { class: "model", text: (s.model || "").replace(/^bundled:/, "") }),
      el("td", {}, progressBar(p.total ? p.done / p.total : 0), el("span", { class: "muted", text: ` ${p.done ?? 0}/${p.total ?? 0}` })),
      el("td", { class: "recipe", text: rec ? rec.label : "—" }),
      el("td", { class: "muted created", text: fmtTime(s.created_at) }));
    tr.addEventListener("click", () => { location.hash = s.id; });
    body.append(tr);
  }
  $("#studies-empty").hidden = studies.length > 0;
}

// The quality figure's descriptor: mean accuracy (higher is better) or perplexity (lower).
function qualityField(study, fields) {
  const q = study.quality || { name: "mean_acc", higher_is_better: true };
  const d = field(fields.fields, q.name);
  return { name: q.name, label: d.label, format: d.format, higher: q.higher_is_better };
}

function points(study, xOf, axis) {
  const front = new Set(((study.pareto || {})[axis]) || []);
  const recId = study.recommendation && study.recommendation.job_id;
  const pts = (study.candidates || []).map((c) => ({
    id: c.job_id, label: c.label, x: xOf(c), y: (c.results || {}).quality,
    front: front.has(c.job_id), recommended: c.job_id === recId, href: "#" + c.job_id,
  }));
  return pts;
}

export function renderStudy(study, fields) {
  $("#study").hidden = false;
  $("#s-id").textContent = study.id;
  const badge = $("#s-status");
  badge.textContent = study.status;
  badge.className = "badge " + study.status;
  const p = study.progress || {};
  $("#s-progress-text").textContent = `${p.done ?? 0} of ${p.total ?? 0} jobs finished`;
  $("#s-bar").style.width = Math.round(100 * (p.total ? p.done / p.total : 0)) + "%";
  const q = qualityField(study, fields);
  const rec = study.recommendation;
  const recBox = $("#s-recommendation");
  recBox.replaceChildren();
  if (rec) {
    const cand = (study.candidates || []).find((c) => c.job_id === rec.job_id);
    recBox.append(el("strong", { text: "Recommended: " }),
      el("a", { href: "#" + rec.job_id, class: "rec-link", text: cand ? cand.label : rec.job_id }),
      el("span", { class: "reason", text: " — " + rec.reason }));
  } else {
    recBox.append(el("span", { class: "muted", text: study.status === "succeeded" ? "no candidate meets the constraints" : "no recommendation yet (the study is " + study.status + ")" }));
  }
  const base = study.baseline || {};
  const baseQuality = q.name === "perplexity" ? (base.results || {}).perplexity : (base.results || {}).mean_acc;
  const baselinePoint = (x) => (typeof baseQuality === "number" && typeof x === "number"
    ? [{ id: base.job_id, label: "baseline (unpruned)", x, y: baseQuality, baseline: true, href: base.job_id ? "#" + base.job_id : null }] : []);
  const pf = fields.fields.params;
  const qfmt = (v) => formatValue(q.format, v);
  $("#s-chart-params").replaceChildren(paretoChart({
    points: [...baselinePoint(base.params), ...points(study, (c) => (c.results || {}).params, "params")],
    xLabel: pf.label, yLabel: q.label, xFormat: (v) => formatValue(pf.format, v), yFormat: qfmt,
    higherIsBetter: q.higher, ariaLabel: q.label + " against parameters",
  }));
  $("#s-chart-speed").replaceChildren(paretoChart({
    points: [...baselinePoint(base.speed ? 1 : null), ...points(study, (c) => (c.results || {}).speedup, "speed")],
    xLabel: fields.fields.speedup.label, yLabel: q.label, xFormat: (v) => formatValue("ratio", v), yFormat: qfmt,
    higherIsBetter: q.higher, ariaLabel: q.label + " against speed-up",
  }));
  // Beside the ranked figure, the other one (perplexity when ranking by accuracy, and back), and the
  // baseline's row first, as the CLI's table has them.
  const other = q.name === "perplexity" ? "mean_acc" : "perplexity";
  const of = field(fields.fields, other);
  const body = $("#s-candidates tbody");
  body.replaceChildren();
  const br = base.results || {};
  if (base.job_id) {
    body.append(el("tr", { "data-job": base.job_id, class: "baseline" },
      el("td", {}, el("a", { href: "#" + base.job_id, text: "baseline (unpruned)" })),
      el("td", {}, el("span", { class: "badge " + (base.status || ""), text: base.status || "—" })),
      el("td", { class: "num", "data-key": "quality", text: formatValue(q.format, baseQuality) }),
      el("td", { class: "num", "data-key": other, text: formatValue(of.format, br[other]) }),
      el("td", { class: "num", "data-key": "params", text: formatValue(pf.format, base.params) }),
      el("td", { class: "num", "data-key": "speedup", text: base.speed ? formatValue("ratio", 1) : "-" }),
      el("td", { text: "—" }), el("td", { text: "—" })));
  }
  for (const c of study.candidates || []) {
    const r = c.results || {};
    const onFront = [(study.pareto || {}).params || [], (study.pareto || {}).speed || []].map((l) => l.includes(c.job_id));
    body.append(el("tr", { "data-job": c.job_id, class: c.job_id === (rec && rec.job_id) ? "recommended" : "" },
      el("td", {}, el("a", { href: "#" + c.job_id, text: c.label })),
      el("td", {}, el("span", { class: "badge " + c.status, text: c.status })),
      el("td", { class: "num", "data-key": "quality", text: formatValue(q.format, r.quality) }),
      el("td", { class: "num", "data-key": other, text: formatValue(of.format, r[other]) }),
      el("td", { class: "num", "data-key": "params", text: formatValue(pf.format, r.params) }),
      el("td", { class: "num", "data-key": "speedup", text: formatValue("ratio", r.speedup) }),
      el("td", { class: "front", text: [onFront[0] ? "params" : "", onFront[1] ? "speed" : ""].filter(Boolean).join(", ") || "—" }),
      el("td", { class: "meets", text: c.meets_constraints === null || c.meets_constraints === undefined ? "—" : c.meets_constraints ? "yes" : "no" })));
  }
  $("#s-quality-head").textContent = q.label;
  $("#s-other-head").textContent = of.label;
}
