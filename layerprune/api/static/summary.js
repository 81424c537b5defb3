// What a job is and what it achieved, in words: its recipe, its headline result, and the rows of
// its before/after table. Labels, units, better directions and formats come from the field
// descriptors (core/units.py FIELDS via /dashboard/fields.json); numbers go through format.js.

import { field, fixed, formatChange, formatValue, metricLabel, stderrKey, verdict } from "./format.js";

// "angular · 25% · linear · distill": how a study labels its candidates too.
export function recipeLabel(spec) {
  const p = (spec || {}).prune;
  const f = (spec || {}).finetune;
  const parts = [];
  if (p) {
    parts.push(p.metric);
    if (typeof p.ratio === "number") parts.push(fixed(100 * p.ratio, 0) + "%");
    else if (typeof p.num_layers === "number") parts.push(p.num_layers + (p.num_layers === 1 ? " layer" : " layers"));
    else if (Array.isArray(p.layers)) parts.push("layers " + p.layers.join(","));
    parts.push(p.replace && p.replace.method && p.replace.method !== "none" ? p.replace.method : "removed");
  } else {
    parts.push("no pruning");
  }
  if (f && f.method && f.method !== "none") parts.push(f.objective === "distill" ? "distill" : "heal " + f.method);
  else if (p) parts.push("no healing");
  return parts.join(" · ");
}

// core.evaluate.report.mean_accuracy: the mean of each multiple-choice task's "acc" on one side of
// the evaluation (generative tasks, which carry higher_is_better, are not in it); null without any.
export function meanAcc(side) {
  const tasks = (side || {}).tasks || {};
  const accs = Object.values(tasks).filter((t) => t && typeof t === "object" && !("higher_is_better" in t))
    .map((t) => t.acc).filter((a) => typeof a === "number");
  return accs.length ? accs.reduce((a, b) => a + b, 0) / accs.length : null;
}

function pair(result, stem) {
  const m = result.metrics || {};
  const b = result[stem + "_before"] ?? (m.before || {})[stem] ?? null;
  const a = result[stem + "_after"] ?? (m.after || {})[stem] ?? null;
  return [b, a];
}

function row(key, label, unit, good, fmt, before, after, extra = {}) {
  return {
    key, label, unit, good, before, after,
    beforeText: formatValue(fmt, before), afterText: formatValue(fmt, after),
    changeText: extra.changeText ?? formatChange(fmt, before, after),
    verdict: extra.verdict ?? verdict(good, before, after),
    beforeErr: typeof extra.beforeErr === "number" ? formatValue(fmt, extra.beforeErr) : null,
    afterErr: typeof extra.afterErr === "number" ? formatValue(fmt, extra.afterErr) : null,
  };
}

// The before/after table: shape (layers, parameters, size), perplexity, every task metric with its
// standard error beside it (counts and timings are not rows), then measured speed.
export function comparisonRows(result, F) {
  const fields = F.fields, tasksLabel = F.tasks;
  const rows = [];
  const shape = (key, stem) => {
    const d = field(fields, key);
    const [b, a] = pair(result, stem);
    if (b !== null || a !== null) rows.push(row(key, d.label, d.unit, d.good, d.format, b, a));
  };
  shape("num_layers", "num_layers");
  shape("params", "params");
  shape("size_bytes", "size_bytes");
  const m = result.metrics || {};
  const before = m.before || {}, after = m.after || {};
  const ppl = (side) => (side.perplexity && typeof side.perplexity === "object" ? side.perplexity.value : side.perplexity) ?? null;
  if (ppl(before) !== null || ppl(after) !== null) {
    const d = field(fields, "perplexity");
    rows.push(row("perplexity", d.label, d.unit, d.good, d.format, ppl(before), ppl(after)));
  }
  const taskNames = [...new Set([...Object.keys(after.tasks || {}), ...Object.keys(before.tasks || {})])];
  for (const task of taskNames) {
    const ta = (after.tasks || {})[task] || {}, tb = (before.tasks || {})[task] || {};
    const hib = ta.higher_is_better || tb.higher_is_better || null;
    const metrics = hib ? Object.keys(hib) : ["acc", "acc_norm"];
    for (const metric of metrics) {
      if (typeof ta[metric] !== "number" && typeof tb[metric] !== "number") continue;
      const d = field(fields, metric);
      const good = hib ? (hib[metric] ? "higher" : "lower") : d.good;
      const fmt = metric === "perplexity" || metric.startsWith("word_perplexity") ? "ppl" : d.format;
      const label = (tasksLabel[task] || task) + " " + metricLabel(fields, metric);
      rows.push(row("tasks." + task + "." + metric, label, d.unit, good, fmt, tb[metric] ?? null, ta[metric] ?? null,
        { beforeErr: tb[stderrKey(metric)], afterErr: ta[stderrKey(metric)] }));
    }
  }
  const sb = (before.speed || {}).batches || {}, sa = (after.speed || {}).batches || {};
  const ratios = ((m.deltas || {}).speed || {}).batches || {};
  for (const stage of ["prefill", "decode"]) {
    const key = stage + "_tokens_per_s";
    const d = field(fields, key);
    for (const b of Object.keys(Object.keys(sa).length ? sa : sb)) {
      const ratio = ((ratios[b] || {})[key] || {}).ratio;
      const has = typeof ratio === "number";
      rows.push(row("speed." + b + "." + key, d.label + " (batch " + b + ")", d.unit, d.good, d.format,
        (sb[b] || {})[key] ?? null, (sa[b] || {})[key] ?? null,
        { changeText: has ? formatValue("ratio", ratio) : "", verdict: has ? verdict(d.good, 1, ratio) : "" }));
    }
  }
  return rows;
}

// The few figures a team lead scans a list for: perplexity change, mean accuracy, parameters.
export function headline(result, F) {
  if (!result) return [];
  const out = [];
  const m = result.metrics || {};
  const before = m.before || {}, after = m.after || {};
  const ppl = (side) => (side.perplexity && side.perplexity.value) ?? null;
  if (ppl(after) !== null) {
    const d = field(F.fields, "perplexity");
    const change = formatChange("ppl", ppl(before), ppl(after));
    out.push({ key: "perplexity", text: "ppl " + formatValue("ppl", ppl(after)) + (change ? " (" + change + ")" : ""),
      verdict: verdict(d.good, ppl(before), ppl(after)) });
  }
  const acc = meanAcc(after);
  if (acc !== null) {
    const d = field(F.fields, "mean_acc");
    const b = meanAcc(before);
    const change = formatChange(d.format, b, acc);
    out.push({ key: "mean_acc", text: "acc " + formatValue(d.format, acc) + (change ? " (" + change + ")" : ""),
      verdict: verdict(d.good, b, acc) });
  }
  if (typeof result.params_after === "number") {
    const d = field(F.fields, "params");
    const change = formatChange(d.format, result.params_before, result.params_after);
    out.push({ key: "params", text: formatValue(d.format, result.params_after) + " params" + (change ? " (" + change + ")" : ""),
      verdict: verdict(d.good, result.params_before, result.params_after) });
  }
  return out;
}
