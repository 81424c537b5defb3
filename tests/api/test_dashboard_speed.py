"""The dashboard's metrics table shows measured speed as tok/s rows with the speed-up (Node, a minimal DOM)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
DASHBOARD = Path(__file__).resolve().parents[2] / "layerprune" / "api" / "static" / "dashboard.js"
# Just enough DOM for dashboard.js to load (no API key: it waits for one) and render a table.
HARNESS = r"""
const vm = require("vm"), fs = require("fs");
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.className = ""; this.textContent = ""; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  append(...c) { this.children.push(...c); }
  replaceChildren(...c) { this.children = c; }
  addEventListener() {}
}
const nodes = {};
const document = { querySelector: (s) => (nodes[s] = nodes[s] || new Node(s)), createElement: (t) => new Node(t),
                   createElementNS: (ns, t) => new Node(t) };
const ctx = { document, window: { addEventListener() {} }, location: { hash: "" }, console, setInterval, clearInterval,
              sessionStorage: { getItem: () => null, setItem() {}, removeItem() {} } };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
ctx.window.layerpruneDashboard.renderMetrics(JSON.parse(process.argv[3]));
const rows = nodes["#d-metrics tbody"].children.map((tr) => [tr.attrs["data-metric"], ...tr.children.map((td) => td.textContent + "|" + td.className)]);
console.log(JSON.stringify(rows));
"""


def _speed(prefill: float, decode: float) -> dict:
    return {"device": "cpu", "dtype": "float32", "threads": 2, "settings": {"repeats": 3, "warmup": 1},
            "batches": {"1": {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "prefill_s": 0.1,
                              "decode_s": 1.0}}}


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_speed_rows_show_tok_s_and_the_speed_up(tmp_path) -> None:
    metrics = {"before": {"perplexity": {"value": 20.0}, "speed": _speed(1000.0, 20.0)},
               "after": {"perplexity": {"value": 22.0}, "speed": _speed(1300.0, 18.0)},
               "deltas": {"speed": {"batches": {"1": {"prefill_tokens_per_s": {"ratio": 1.3},
                                                      "decode_tokens_per_s": {"ratio": 0.9}}}}}}
    script = tmp_path / "harness.js"
    script.write_text(HARNESS)
    out = subprocess.run([NODE, str(script), str(DASHBOARD), json.dumps(metrics)], capture_output=True, text=True,
                         timeout=60, check=True)
    rows = {r[0]: r[1:] for r in json.loads(out.stdout)}
    # Settings, seconds and threads are not rows; the two figures are, labelled, with their ratio.
    assert set(rows) == {"perplexity.value", "speed.batches.1.decode_tokens_per_s", "speed.batches.1.prefill_tokens_per_s"}
    assert rows["speed.batches.1.prefill_tokens_per_s"] == ["prefill tok/s (batch 1)|mono", "1,000|", "1,300|",
                                                            "×1.30|delta-good"]
    assert rows["speed.batches.1.decode_tokens_per_s"][0] == "decode tok/s (batch 1)|mono"
    assert rows["speed.batches.1.decode_tokens_per_s"][3] == "×0.90|delta-bad"
