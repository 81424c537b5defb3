// The port of layerprune/core/units.py: the CLI, the model card and this page print the same
// string for every figure (tests/cli/test_units.py runs these functions in node against Python).
// toFixed/toExponential round the exact value of the double half away from zero, as units.fixed
// does with Decimal. What each figure is (label, unit, better direction, format) is not here: it is
// units.FIELDS, fetched from /dashboard/fields.json (loadFields).

export function fmtBytes(n) {
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

export function fixed(x, digits) {
  return x.toFixed(digits);
}

export function scientific(x, digits = 2) {
  return x.toExponential(digits);
}

export function significant(x) {
  if (x === 0) return "0";
  const exp = Number(scientific(x).split("e")[1]);
  return exp < -4 || exp >= 3 ? scientific(x) : fixed(x, 2 - exp);
}

export function humanCount(n) {
  if (n === null || n === undefined) return "-";
  for (const [unit, size] of [["B", 1e9], ["M", 1e6], ["k", 1e3]]) {
    if (Math.abs(n) >= size) return fixed(n / size, 1) + unit;
  }
  return fixed(n, 0);
}

export function formatValue(fmt, x) {
  if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "-";
  switch (fmt) {
    case "bytes": return fmtBytes(x);
    case "count": return humanCount(x);
    case "int": return fixed(x, 0);
    case "score": return fixed(x, 3);
    case "ppl": return Math.abs(x) >= 1e5 ? scientific(x) : fixed(x, 2);
    case "rate": return fixed(x, 1);
    case "ratio": return "x" + fixed(x, 2);
    default: return Math.abs(x) >= 1e5 ? scientific(x) : fixed(x, Math.abs(x) < 10 ? 3 : 2);
  }
}

const signed = (text) => (text.startsWith("-") ? text : "+" + text);

export function formatChange(fmt, before, after) {
  if (typeof before !== "number" || typeof after !== "number") return "";
  if (["count", "bytes", "ppl", "number"].includes(fmt)) {
    if (!before) return "";
    const ratio = after / before;
    if (fmt === "ppl" && (ratio >= 10 || ratio <= 0.1)) return "x" + significant(ratio);
    return signed(fixed(100 * (ratio - 1), 1)) + "%";
  }
  if (fmt === "rate") return before ? "x" + fixed(after / before, 2) : "";
  if (fmt === "int") return signed(fixed(after - before, 0));
  return signed(fixed(after - before, 3));
}

export function verdict(good, before, after) {
  if ((good !== "lower" && good !== "higher") || typeof before !== "number" || typeof after !== "number") return "";
  if (after === before) return "same";
  return (after < before) === (good === "lower") ? "good" : "bad";
}

// units.field: a task metric "exact_match,strict-match" is its metric's; unknown: a plain number.
export function field(fields, name) {
  const base = name.split(",")[0];
  return fields[name] || fields[base] || { label: name.replaceAll("_", " "), unit: "", good: null, format: "number" };
}

// units.metric_label: "exact match (flexible-extract)" for lm-eval's "exact_match,flexible-extract".
export function metricLabel(fields, name) {
  const [base, filter] = name.split(",");
  const label = field(fields, base).label;
  return filter ? label + " (" + filter + ")" : label;
}

// units.stderr_key: "exact_match_stderr,strict-match" beside "exact_match,strict-match".
export function stderrKey(name) {
  const i = name.indexOf(",");
  return i < 0 ? name + "_stderr" : name.slice(0, i) + "_stderr" + name.slice(i);
}

export function fmtTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19);
}

export function fmtDuration(seconds) {  // units: the CLI's human_duration
  if (typeof seconds !== "number" || !isFinite(seconds) || seconds < 0) return "-";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (v) => String(v).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}
