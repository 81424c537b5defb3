// The jobs list: what each job is (model, recipe), where it stands and what it achieved.

import { $, el, progressBar } from "./dom.js";
import { fmtTime } from "./format.js";
import { headline, recipeLabel } from "./summary.js";

function modelName(spec) {
  const ref = (spec || {}).model || "";
  return ref.replace(/^bundled:/, "");
}

export function renderJobs(jobs, selected, fields, onSelect) {
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const result = el("td", { class: "result" });
    for (const h of headline(job.result, fields)) {
      result.append(el("span", { class: "figure " + (h.verdict || ""), "data-key": h.key, text: h.text }), " ");
    }
    if (!result.childNodes.length) result.append(el("span", { class: "muted", text: job.error ? job.error.code : "—" }));
    const tr = el("tr", { "data-id": job.id, class: job.id === selected ? "selected" : "" },
      el("td", { class: "mono id", text: job.id }),
      el("td", {}, el("span", { class: "badge " + job.status, text: job.status })),
      el("td", { class: "model", text: modelName(job.spec) }),
      el("td", { class: "recipe", text: recipeLabel(job.spec) }),
      result,
      el("td", { class: "stage" }, progressBar(job.progress), el("span", { class: "muted", text: " " + (job.stage || "") })),
      el("td", { class: "muted created", text: fmtTime(job.created_at) }));
    tr.addEventListener("click", () => onSelect(job.id));
    body.append(tr);
  }
  $("#jobs-empty").hidden = jobs.length > 0;
}
