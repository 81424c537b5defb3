// layerprune dashboard: plain JS, no build step, no third-party code.
// The API key lives in sessionStorage (gone when the tab closes) and is sent as a Bearer header.
// Jobs and events are polled: the list every 3 s, the selected job every second while it is live.
"use strict";

const KEY_NAME = "layerprune.apiKey";
const LIVE = new Set(["queued", "running", "cancelling"]);
const state = { jobs: [], selected: null, job: null, events: [], lastEventId: null, timers: [] };

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const svgEl = (tag, attrs = {}) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
};

function apiKey() { return sessionStorage.getItem(KEY_NAME) || ""; }

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + apiKey(), "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || ("HTTP " + res.status));
    err.status = res.status;
    throw err;
  }
  return data;
}

function setConn(text, bad) {
  const c = $("#conn");
  c.textContent = text;
  c.className = bad ? "error" : "muted";
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

function fmtNum(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
}

// The port of layerprune/core/units.py human_bytes (decimal units, one decimal, half up in
// integer arithmetic): the CLI, the model card and this page print the same string for a size.
function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const sign = n < 0 ? "-" : "";
  const whole = Math.floor(Math.abs(n) + 0.5);
  for (const [unit, size] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
    if (whole >= size) {
      const tenths = Math.floor((10 * whole + size / 2) / size);
      return sign + Math.floor(tenths / 10) + "." + (tenths % 10) + " " + unit;
    }
  }
  return sign + whole + " B";
}

function progressBar(p) {
  const bar = el("div", { class: "progress" }, el("div"));
  bar.firstChild.style.width = Math.round((p || 0) * 100) + "%";
  return bar;
}

// ------------------------------------------------------------------ jobs list

async function refreshJobs() {
  if (!apiKey()) return;
  const status = $("#status-filter").value;
  try {
    const page = await api("GET", "/v1/jobs?limit=50" + (status ? "&status=" + status : ""));
    state.jobs = page.data;
    setConn("connected · " + page.data.length + " jobs", false);
    renderJobs();
  } catch (e) {
    setConn(e.status === 401 ? "the API key was refused" : "cannot reach the API: " + e.message, true);
  }
}

function renderJobs() {
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const job of state.jobs) {
    const tr = el("tr", { "data-id": job.id, class: job.id === state.selected ? "selected" : "" },
      el("td", { class: "mono", text: job.id }),
      el("td", {}, el("span", { class: "badge " + job.status, text: job.status })),
      el("td", { text: job.stage || "" }),
      el("td", {}, progressBar(job.progress)),
      el("td", { class: "muted", text: fmtTime(job.created_at) }));
    tr.addEventListener("click", () => select(job.id));
    body.append(tr);
  }
  $("#jobs-empty").hidden = state.jobs.length > 0;
}

// ------------------------------------------------------------------ one job

function select(id) {
  if (state.selected !== id) {
    state.selected = id;
    state.job = null;
    state.events = [];
    state.lastEventId = null;
    $("#d-events").replaceChildren();
    if (location.hash !== "#" + id) history.replaceState(null, "", "#" + id);
  }
  renderJobs();
  refreshDetail();
}

async function refreshDetail() {
  const id = state.selected;
  if (!id || !apiKey()) return;
  try {
    const job = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
    if (id !== state.selected) return;
    const changed = !state.job || state.job.status !== job.status || state.job.updated_at !== job.updated_at;
    state.job = job;
    if (changed) {
      renderDetail();
      // Keep the list's row in step with the detail (the list itself polls less often).
      const i = state.jobs.findIndex((j) => j.id === job.id);
      if (i >= 0) { state.jobs[i] = job; renderJobs(); }
    }
    await refreshEvents(id);
  } catch (e) {
    if (e.status === 404) { $("#detail").hidden = true; state.selected = null; }
  }
}

async function refreshEvents(id) {
  for (let page = 0; page < 20; page++) {  // catch up in pages of 200, then wait for the next tick
    const q = "?limit=200" + (state.lastEventId ? "&after=" + encodeURIComponent(state.lastEventId) : "");
    const res = await api("GET", "/v1/jobs/" + encodeURIComponent(id) + "/events" + q);
    if (id !== state.selected) return;
    for (const evt of res.data) appendEvent(evt);
    if (res.data.length) state.lastEventId = res.data[res.data.length - 1].id;
    if (!res.has_more) return;
  }
}

function appendEvent(evt) {
  const list = $("#d-events");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const d = evt.data || {};
  const extra = [];  // training progress: loss, throughput and ETA when the worker reports them
  if (typeof d.loss === "number") extra.push("loss " + fmtNum(d.loss));
  if (typeof d.tokens_per_s === "number") extra.push(fmtNum(d.tokens_per_s) + " tok/s");
  if (typeof d.eta_s === "number") extra.push("ETA " + Math.round(d.eta_s) + " s");
  list.append(el("li", { class: evt.level, "data-type": evt.type },
    el("span", { class: "t", text: fmtTime(evt.created_at).slice(11) }),
    el("span", { class: "ty", text: evt.type }), " " + evt.message,
    el("span", { class: "muted", text: extra.length ? " · " + extra.join(" · ") : "" })));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function renderDetail() {
  const job = state.job;
  $("#detail").hidden = false;
  $("#d-id").textContent = job.id;
  const badge = $("#d-status");
  badge.textContent = job.status;
  badge.className = "badge " + job.status;
  const pct = Math.round((job.progress || 0) * 100);
  $("#d-bar").style.width = pct + "%";
  $("#d-progress-text").textContent = pct + "%" + (job.stage ? " · " + job.stage : "");
  $("#d-cancel").hidden = !LIVE.has(job.status) || job.status === "cancelling";
  $("#d-delete").hidden = LIVE.has(job.status) || !(job.result && (job.result.artifacts || []).length);

  const spec = job.spec || {};
  const facts = [
    ["model", spec.model], ["prune", spec.prune ? spec.prune.metric + " " + JSON.stringify(
      spec.prune.ratio ?? spec.prune.num_layers ?? spec.prune.layers) : "—"],
    ["finetune", spec.finetune ? spec.finetune.method : "—"],
    ["stage", job.stage || "—"], ["attempts", job.attempts + " / " + job.max_attempts],
    ["created", fmtTime(job.created_at)], ["started", fmtTime(job.started_at)],
    ["finished", fmtTime(job.finished_at)],
    ["metadata", Object.keys(job.metadata || {}).length ? JSON.stringify(job.metadata) : "—"],
  ];
  const r = job.result || {};
  if (r.num_layers_before) facts.push(["layers", r.num_layers_before + " → " + r.num_layers_after]);
  if (r.params_before) facts.push(["parameters", fmtNum(r.params_before) + " → " + fmtNum(r.params_after)]);
  if (r.size_bytes_before) facts.push(["size on disk", fmtBytes(r.size_bytes_before) + " → " + fmtBytes(r.size_bytes_after)]);
  if (r.removed_layers) facts.push(["removed layers", r.removed_layers.join(", ") || "none"]);
  const dl = $("#d-facts");
  dl.replaceChildren();
  for (const [k, v] of facts) dl.append(el("dt", { text: k }), el("dd", { text: v ?? "—" }));

  const err = $("#d-error");
  err.hidden = !job.error;
  err.textContent = job.error ? job.error.code + ": " + job.error.message : "";

  renderChart(r.layer_scores, r.removed_layers || [], r.num_layers_before);
  renderMetrics(r.metrics || {});
  renderArtifacts(job);
}

// ------------------------------------------------------------------ layer-score chart (inline SVG)

function renderChart(scores, removed, numLayers) {
  const box = $("#d-chart");
  box.replaceChildren();
  const n = (scores && scores.length) || numLayers || 0;
  if (!n) { box.append(el("p", { class: "muted", text: "no layer scores yet" })); return; }
  const removedSet = new Set(removed);
  const vals = (scores || []).filter((v) => typeof v === "number" && isFinite(v));
  // Perplexity-style scores span orders of magnitude (layer 0: 38,680 vs 24 elsewhere): use a log scale.
  const positive = vals.length && vals.every((v) => v > 0);
  const logScale = positive && Math.max(...vals) / Math.min(...vals) > 100;
  const tf = (v) => (logScale ? Math.log10(v) : v);
  const lo = vals.length ? Math.min(0, ...vals.map(tf)) : 0;
  const hi = vals.length ? Math.max(...vals.map(tf)) : 1;
  const W = 720, H = 220, left = 44, bottom = 28, top = 10;
  const bw = (W - left - 6) / n;
  const y = (v) => top + (H - top - bottom) * (1 - (tf(v) - lo) / ((hi - lo) || 1));
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "per-layer importance scores" });
  svg.append(svgEl("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: "#c8cdd8" }));
  for (const t of [lo, (lo + hi) / 2, hi]) {
    const label = svgEl("text", { x: left - 4, y: top + (H - top - bottom) * (1 - (t - lo) / ((hi - lo) || 1)) + 3,
      "text-anchor": "end" });
    label.textContent = logScale ? "1e" + t.toFixed(1) : fmtNum(t);
    svg.append(label);
  }
  for (let i = 0; i < n; i++) {
    const v = scores ? scores[i] : null;
    const isRemoved = removedSet.has(i);
    const x = left + i * bw + bw * 0.12;
    const w = bw * 0.76;
    let bar;
    if (typeof v === "number" && isFinite(v)) {
      const yy = y(v), base = y(logScale ? Math.pow(10, lo) : Math.max(lo, 0));
      bar = svgEl("rect", { x, y: Math.min(yy, base), width: w, height: Math.max(1, Math.abs(base - yy)),
        class: "bar " + (isRemoved ? "removed" : "kept"), "data-layer": i });
    } else {  // unscored (reverse order, random, manual): a stub so removed layers still show
      bar = svgEl("rect", { x, y: H - bottom - 6, width: w, height: 6,
        class: "bar " + (isRemoved ? "removed" : "na"), "data-layer": i });
    }
    const tip = svgEl("title");
    tip.textContent = `layer ${i}: ${typeof v === "number" ? v : "no score"}${isRemoved ? " (removed)" : ""}`;
    bar.append(tip);
    svg.append(bar);
    if (isRemoved) {
      const mark = svgEl("text", { x: x + w / 2, y: H - bottom + 22, "text-anchor": "middle", class: "removed-mark",
        fill: "#c23b3b" });
      mark.textContent = "×";
      svg.append(mark);
    }
    if (n <= 40 || i % 5 === 0) {
      const label = svgEl("text", { x: x + w / 2, y: H - bottom + 11, "text-anchor": "middle" });
      label.textContent = String(i);
      svg.append(label);
    }
  }
  box.append(svg, el("div", { class: "legend" },
    el("span", {}, el("i", { class: "swatch kept" }), "kept"),
    el("span", {}, el("i", { class: "swatch removed" }), "removed (×)"),
    el("span", { text: logScale ? "log scale" : "" })));
}

// ------------------------------------------------------------------ before / after metrics

function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? prefix + "." + k : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else if (typeof v === "number") out[key] = v;
  }
  return out;
}

// A task result may say which way each of its metrics is better (lm-eval's higher_is_better:
// LAMBADA's perplexity is lower-is-better); otherwise perplexity is, and the rest is not.
function lowerIsBetter(key, metrics) {
  const parts = key.split(".");
  if (parts[0] === "tasks" && parts.length === 3) {
    const task = ((metrics.after || {}).tasks || {})[parts[1]] || ((metrics.before || {}).tasks || {})[parts[1]] || {};
    const hib = task.higher_is_better || {};
    if (Object.prototype.hasOwnProperty.call(hib, parts[2])) return hib[parts[2]] === false;
  }
  return key.startsWith("perplexity") || parts[parts.length - 1].startsWith("perplexity");
}

// Measured speed (evaluate.speed): "decode tok/s (batch 1)" for speed.batches.1.decode_tokens_per_s;
// null for its settings, seconds and thread count, which are not compared.
function speedLabel(key) {
  const m = /^speed\.batches\.([^.]+)\.(prefill|decode)_tokens_per_s$/.exec(key);
  return m ? m[2] + " tok/s (batch " + m[1] + ")" : null;
}

function renderMetrics(metrics) {
  const before = flatten(metrics.before, "", {});
  const after = flatten(metrics.after, "", {});
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort()
    .filter((k) => !k.startsWith("speed.") || speedLabel(k));
  const body = $("#d-metrics tbody");
  body.replaceChildren();
  for (const k of keys) {
    const b = before[k], a = after[k];
    if (speedLabel(k)) {
      // Higher is better; the change is the speed-up after / before, as deltas.speed computed it.
      const parts = k.split(".");
      const ratio = ((((((metrics.deltas || {}).speed || {}).batches || {})[parts[2]] || {})[parts[3]]) || {}).ratio;
      const cls = typeof ratio !== "number" || ratio === 1 ? "" : ratio > 1 ? "delta-good" : "delta-bad";
      body.append(el("tr", { "data-metric": k }, el("td", { class: "mono", text: speedLabel(k) }),
        el("td", { text: fmtNum(b) }), el("td", { text: fmtNum(a) }),
        el("td", { class: cls, text: typeof ratio === "number" ? "×" + ratio.toFixed(2) : "—" })));
      continue;
    }
    const d = typeof a === "number" && typeof b === "number" ? a - b : null;
    // Lower perplexity is better; higher accuracy is better.
    const better = d === null || d === 0 ? "" : (lowerIsBetter(k, metrics) ? d < 0 : d > 0) ? "delta-good" : "delta-bad";
    body.append(el("tr", { "data-metric": k }, el("td", { class: "mono", text: k }),
      el("td", { text: fmtNum(b) }), el("td", { text: fmtNum(a) }),
      el("td", { class: better, text: d === null ? "—" : (d > 0 ? "+" : "") + fmtNum(d) })));
  }
  $("#d-metrics-empty").hidden = keys.length > 0;
  $("#d-metrics").hidden = keys.length === 0;
}

// ------------------------------------------------------------------ artifacts

async function downloadLink(jobId, path) {
  const link = await api("POST", "/v1/download-links", { job_id: jobId, path });
  return link.url;
}

function renderArtifacts(job) {
  const list = $("#d-artifacts");
  list.replaceChildren();
  const arts = (job.result && job.result.artifacts) || [];
  for (const a of arts) {
    const link = el("a", { href: "#", "data-path": a.path, text: a.path });
    link.addEventListener("click", async (ev) => {
      ev.preventDefault();
      try {
        window.location.assign(await downloadLink(job.id, a.path));
      } catch (e) { setConn("download failed: " + e.message, true); }
    });
    list.append(el("li", {}, link, el("span", { class: "muted", text: " " + fmtBytes(a.size_bytes) })));
  }
  $("#d-artifacts-empty").hidden = arts.length > 0;
}

// ------------------------------------------------------------------ actions and start-up

async function cancelJob() {
  try { await api("POST", "/v1/jobs/" + state.selected + "/cancel"); } catch (e) { setConn(e.message, true); }
  refreshDetail();
}

async function deleteArtifacts() {
  if (!confirm("Delete the stored artifacts of " + state.selected + "?")) return;
  try { await api("DELETE", "/v1/jobs/" + state.selected); } catch (e) { setConn(e.message, true); }
  refreshDetail();
}

function start() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  if (!apiKey()) { setConn("enter an API key", false); return; }
  refreshJobs();
  state.timers.push(setInterval(refreshJobs, 3000));
  state.timers.push(setInterval(() => {
    if (state.selected && (!state.job || LIVE.has(state.job.status))) refreshDetail();
  }, 1000));
  const fromHash = location.hash.slice(1);
  if (fromHash) select(fromHash);
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_NAME, key);
  $("#api-key").value = "";
  start();
});
$("#key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME);
  state.jobs = [];
  renderJobs();
  $("#detail").hidden = true;
  start();
});
$("#status-filter").addEventListener("change", refreshJobs);
$("#d-cancel").addEventListener("click", cancelJob);
$("#d-delete").addEventListener("click", deleteArtifacts);
window.addEventListener("hashchange", () => { const id = location.hash.slice(1); if (id) select(id); });
window.layerpruneDashboard = { downloadLink, state, refreshJobs, refreshDetail, renderChart, renderMetrics };
start();
