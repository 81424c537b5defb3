// One job: its facts and progress, the training-loss curve, the layer chart, the before/after
// table, its artifacts and its events (polled; the loss points are read from progress events).

import { $, el } from "./dom.js";
import { downloadLink } from "./api.js";
import { fmtTime, formatValue } from "./format.js";
import { layerChart, lossCurve } from "./charts.js";
import { comparisonRows, recipeLabel } from "./summary.js";

const LIVE = new Set(["queued", "running", "cancelling"]);
export const isLive = (job) => LIVE.has(job.status);

// What the progress bar measures now: "evaluate · after · piqa 12/25" (the CLI's label).
export function progressLabel(job, lastProgress) {
  const d = (lastProgress && lastProgress.data) || {};
  const words = [job.stage || job.status];
  if (job.status === "running" && d.stage === job.stage) {
    if (d.part) words.push(d.part);
    if (d.task) words.push(d.task + (typeof d.task_done === "number" && d.task_total ? ` ${d.task_done}/${d.task_total}` : ""));
  }
  return words.join(" · ");
}

export function renderJob(job, view, fields) {
  $("#detail").hidden = false;
  $("#d-id").textContent = job.id;
  const badge = $("#d-status");
  badge.textContent = job.status;
  badge.className = "badge " + job.status;
  const pct = Math.round((job.progress || 0) * 100);
  $("#d-bar").style.width = pct + "%";
  $("#d-progress-text").textContent = pct + "% · " + progressLabel(job, view.lastProgress);
  $("#d-cancel").hidden = !isLive(job) || job.status === "cancelling";
  $("#d-delete").hidden = isLive(job) || !(job.result && (job.result.artifacts || []).length);

  const spec = job.spec || {};
  const r = job.result || {};
  const facts = [
    ["model", spec.model], ["recipe", recipeLabel(spec)],
    ["attempts", job.attempts + " / " + job.max_attempts],
    ["created", fmtTime(job.created_at)], ["started", fmtTime(job.started_at)], ["finished", fmtTime(job.finished_at)],
    ["metadata", Object.keys(job.metadata || {}).length ? JSON.stringify(job.metadata) : "—"],
  ];
  if (r.removed_layers) facts.push(["removed layers", r.removed_layers.join(", ") || "none"]);
  const dl = $("#d-facts");
  dl.replaceChildren();
  for (const [k, v] of facts) dl.append(el("dt", { text: k }), el("dd", { text: v ?? "—" }));

  const err = $("#d-error");
  err.hidden = !job.error;
  err.textContent = job.error ? job.error.code + ": " + job.error.message : "";

  const metric = (r.prune && r.prune.metric) || (spec.prune && spec.prune.metric);
  $("#d-chart").replaceChildren(layerChart(r.layer_scores, r.removed_layers || [], r.num_layers_before, metric));
  renderComparison(r, fields);
  renderArtifacts(job, view.onError);
}

export function renderLoss(points) {
  $("#d-loss").replaceChildren(lossCurve(points));
}

export function renderComparison(result, fields) {
  const rows = comparisonRows(result || {}, fields);
  const body = $("#d-metrics tbody");
  body.replaceChildren();
  for (const r of rows) {
    const cell = (cls, text, err) => el("td", { class: "num " + cls },
      el("span", { class: "v", text }), err ? el("span", { class: "err", text: " ± " + err }) : null);
    body.append(el("tr", { "data-metric": r.key, "data-good": r.good || "" },
      el("td", { class: "label" }, el("span", { text: r.label }), r.unit ? el("span", { class: "unit", text: " " + r.unit }) : null),
      cell("before", r.beforeText, r.beforeErr), cell("after", r.afterText, r.afterErr),
      el("td", { class: "num change " + (r.verdict ? "delta-" + r.verdict : ""), text: r.changeText || "—",
        title: r.good ? (r.good === "lower" ? "lower is better" : "higher is better") : "" })));
  }
  $("#d-metrics-empty").hidden = rows.length > 0;
  $("#d-metrics").hidden = rows.length === 0;
}

function renderArtifacts(job, onError) {
  const list = $("#d-artifacts");
  list.replaceChildren();
  const arts = (job.result && job.result.artifacts) || [];
  for (const a of arts) {
    const link = el("a", { href: "#", "data-path": a.path, text: a.path });
    link.addEventListener("click", async (ev) => {
      ev.preventDefault();
      try { window.location.assign(await downloadLink(job.id, a.path)); } catch (e) { onError("download failed: " + e.message); }
    });
    list.append(el("li", {}, link, el("span", { class: "muted", text: " " + formatValue("bytes", a.size_bytes) })));
  }
  $("#d-artifacts-empty").hidden = arts.length > 0;
}

export function appendEvent(evt) {
  const list = $("#d-events");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const d = evt.data || {};
  const extra = [];  // what the progress is about, and training figures where the worker reports them
  if (evt.type === "progress" && (d.part || d.task)) extra.push([d.part, d.task].filter(Boolean).join(" · "));
  if (typeof d.loss === "number") extra.push("loss " + formatValue("score", d.loss));
  if (typeof d.tokens_per_s === "number") extra.push(formatValue("rate", d.tokens_per_s) + " tok/s");
  if (typeof d.eta_s === "number") extra.push("ETA " + Math.round(d.eta_s) + " s");
  list.append(el("li", { class: evt.level, "data-type": evt.type },
    el("span", { class: "t", text: fmtTime(evt.created_at).slice(11) }),
    el("span", { class: "ty", text: evt.type }), " " + evt.message,
    el("span", { class: "muted", text: extra.length ? " · " + extra.join(" · ") : "" })));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// A loss point from a progress event: step on x (the event count where no step is given).
export function lossPoint(evt, index) {
  const d = evt.data || {};
  if (evt.type !== "progress" || typeof d.loss !== "number") return null;
  return { x: typeof d.step === "number" ? d.step : index, y: d.loss, stage: d.stage };
}
