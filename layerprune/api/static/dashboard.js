// layerprune dashboard: plain JS modules, no build step, no third-party code. This file starts the
// page and routes it: #job_… shows a job, #studies the studies, #study_… one study. The jobs list
// is polled every 3 s, the selected job (and its events) every second while it is live, a live
// study every 3 s. Each module has one job: api.js (HTTP and the key), format.js (the numbers, a
// port of core/units.py), summary.js (recipe, headline, before/after rows), charts.js (SVG),
// jobs-list.js, job.js, studies.js.

import { $ } from "./dom.js";
import { setConn } from "./dom.js";
import { api, apiKey, downloadLink, forgetApiKey, loadFields, setApiKey } from "./api.js";
import { renderJobs } from "./jobs-list.js";
import { appendEvent, isLive, lossPoint, renderComparison, renderJob, renderLoss } from "./job.js";
import { renderStudies, renderStudy } from "./studies.js";
import { layerChart } from "./charts.js";

const state = { fields: null, jobs: [], selected: null, job: null, events: 0, lastEventId: null, loss: [],
  lastProgress: null, study: null, studyId: null, view: "jobs", timers: [] };

function showView(view) {
  state.view = view;
  $("#jobs-view").hidden = view !== "jobs";
  $("#studies-view").hidden = view !== "studies";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
}

// ------------------------------------------------------------------ jobs

async function refreshJobs() {
  if (!apiKey() || !state.fields) return;
  const status = $("#status-filter").value;
  try {
    const page = await api("GET", "/v1/jobs?limit=50" + (status ? "&status=" + status : ""));
    state.jobs = page.data;
    setConn("connected · " + page.data.length + " jobs", false);
    drawJobs();
  } catch (e) {
    setConn(e.status === 401 ? "the API key was refused" : "cannot reach the API: " + e.message, true);
  }
}

const drawJobs = () => renderJobs(state.jobs, state.selected, state.fields, (id) => { location.hash = id; });

function selectJob(id) {
  showView("jobs");
  if (state.selected !== id) {
    Object.assign(state, { selected: id, job: null, events: 0, lastEventId: null, loss: [], lastProgress: null });
    $("#d-events").replaceChildren();
    renderLoss([]);
  }
  drawJobs();
  refreshDetail();
}

async function refreshDetail() {
  const id = state.selected;
  if (!id || !apiKey() || !state.fields) return;
  try {
    const job = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
    if (id !== state.selected) return;
    const changed = !state.job || state.job.status !== job.status || state.job.updated_at !== job.updated_at;
    state.job = job;
    await refreshEvents(id);
    if (changed) {
      renderJob(job, { lastProgress: state.lastProgress, onError: (m) => setConn(m, true) }, state.fields);
      const i = state.jobs.findIndex((j) => j.id === job.id);  // keep the list's row in step
      if (i >= 0) { state.jobs[i] = job; drawJobs(); }
    }
  } catch (e) {
    if (e.status === 404) { $("#detail").hidden = true; state.selected = null; }
  }
}

async function refreshEvents(id) {
  let grew = false;
  for (let page = 0; page < 20; page++) {  // catch up in pages of 200, then wait for the next tick
    const q = "?limit=200" + (state.lastEventId ? "&after=" + encodeURIComponent(state.lastEventId) : "");
    const res = await api("GET", "/v1/jobs/" + encodeURIComponent(id) + "/events" + q);
    if (id !== state.selected) return;
    for (const evt of res.data) {
      appendEvent(evt);
      if (evt.type === "progress") state.lastProgress = evt;
      const p = lossPoint(evt, state.events++);
      if (p) { state.loss.push(p); grew = true; }
    }
    if (res.data.length) state.lastEventId = res.data[res.data.length - 1].id;
    if (!res.has_more) break;
  }
  if (grew) {
    // Healing's own steps when the job healed; else (healing between rounds only) every point.
    const heal = state.loss.filter((p) => p.stage === "finetune");
    renderLoss(heal.length ? heal : state.loss);
  }
}

async function cancelJob() {
  try { await api("POST", "/v1/jobs/" + state.selected + "/cancel"); } catch (e) { setConn(e.message, true); }
  refreshDetail();
}

async function deleteArtifacts() {
  if (!confirm("Delete the stored artifacts of " + state.selected + "?")) return;
  try { await api("DELETE", "/v1/jobs/" + state.selected); } catch (e) { setConn(e.message, true); }
  state.job = null;
  refreshDetail();
}

// ------------------------------------------------------------------ studies

async function refreshStudies() {
  try {
    const page = await api("GET", "/v1/studies?limit=50");
    renderStudies(page.data || []);
    $("#studies-error").hidden = true;
  } catch (e) {
    $("#studies-error").hidden = false;
    $("#studies-error").textContent = e.status === 404 ? "this server has no studies API" : "cannot list studies: " + e.message;
  }
}

async function refreshStudy() {
  const id = state.studyId;
  if (!id) return;
  try {
    const study = await api("GET", "/v1/studies/" + encodeURIComponent(id));
    if (id === state.studyId) { state.study = study; renderStudy(study, state.fields); }
  } catch (e) {
    if (e.status === 404) { $("#study").hidden = true; }
  }
}

function openStudies(id) {
  showView("studies");
  state.studyId = id || null;
  $("#study").hidden = !id;
  refreshStudies();
  if (id) refreshStudy();
}

// ------------------------------------------------------------------ routing and start-up

function route() {
  const h = location.hash.slice(1);
  if (h.startsWith("study_")) openStudies(h);
  else if (h === "studies") openStudies(null);
  else if (h) selectJob(h);
  else showView("jobs");
}

async function start() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  if (!apiKey()) { setConn("enter an API key", false); return; }
  try {
    state.fields = await loadFields();
  } catch (e) {
    setConn("cannot load the page's field table: " + e.message, true);
    return;
  }
  refreshJobs();
  state.timers.push(setInterval(refreshJobs, 3000));
  state.timers.push(setInterval(() => {
    if (state.view === "jobs" && state.selected && (!state.job || isLive(state.job))) refreshDetail();
  }, 1000));
  state.timers.push(setInterval(() => {
    if (state.view === "studies" && state.studyId && (!state.study || ["queued", "running"].includes(state.study.status))) refreshStudy();
  }, 3000));
  route();
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#api-key").value.trim();
  if (key) setApiKey(key);
  $("#api-key").value = "";
  start();
});
$("#key-forget").addEventListener("click", () => {
  forgetApiKey();
  state.jobs = [];
  renderJobs([], null, state.fields || { fields: {}, tasks: {} }, () => {});
  $("#detail").hidden = true;
  start();
});
$("#status-filter").addEventListener("change", refreshJobs);
$("#d-cancel").addEventListener("click", cancelJob);
$("#d-delete").addEventListener("click", deleteArtifacts);
window.addEventListener("hashchange", () => { if (apiKey() && state.fields) route(); });
// A link to the page already in the address bar (a study's candidate whose job was open before)
// fires no hashchange: route it anyway.
document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a[href^='#']");
  if (a && a.getAttribute("href") === location.hash && apiKey() && state.fields) route();
});

// For tests and the console: draw a chart, a table or a study from given data.
window.layerpruneDashboard = {
  state, downloadLink, refreshJobs, refreshDetail,
  renderChart: (scores, removed, n, metric) => $("#d-chart").replaceChildren(layerChart(scores, removed, n, metric)),
  renderMetrics: (result) => renderComparison(result, state.fields),
  renderStudy: (study) => { showView("studies"); renderStudy(study, state.fields); },
  renderStudies: (studies) => { showView("studies"); renderStudies(studies); },
  renderLoss,
};
start();
