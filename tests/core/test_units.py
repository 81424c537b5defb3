"""One formatter: the CLI's and the model card's (core.units) and the dashboard's JS port
(api/static/format.js) print the same string for every value, checked by running the page's own
module in node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from layerprune.cli.render import human_bytes, summary_table
from layerprune.core import units

STATIC = Path(units.__file__).resolve().parents[1] / "api" / "static"
FORMAT_JS = STATIC / "format.js"

VALUES = [0, 1, 12, 999, 1000, 1049, 1050, 1250, 1350, 9_999, 99_950, 999_949, 999_950, 1_000_000,
          1_049_999, 1_050_000, 134_515_008, 209_400_000, 219_521_152, 269_060_000, 999_999_999,
          1_000_000_000, 1_250_000_000, 12_345_678_901_234, 7.4, 1249.5, 1250.5, -1250]


def test_python_rule():
    assert human_bytes(None) == "-" and human_bytes(12) == "12 B" and human_bytes(999) == "999 B"
    assert human_bytes(1000) == "1.0 kB"
    assert human_bytes(1250) == "1.3 kB"  # an exact tie rounds up (f"{1.25:.1f}" gives "1.2")
    assert human_bytes(219_521_152) == "219.5 MB"  # the bundled model's weights; 209.4 MiB before
    assert human_bytes(1_250_000_000) == "1.3 GB" and human_bytes(-1250) == "-1.3 kB"


FIGURES = [0, 0.0005, 0.0015, 0.125, 0.1235, 0.3745, 0.5, 0.52, 1.005, 1.325, 2.675, 9.9995, 12.345, 18.99,
           99.95, 652.7, 999.6, 12_399.335539546742, 99_999.995, 100_000, 24_925_910.06, 134_515_008, -0.0001,
           -0.5, -1.2345, 3_530_880, 1e-6, 0.05236]
PAIRS = [(18.99, 12_399.34), (20.2, 41.5), (41.5, 20.2), (100, 5), (134_515_008, 109_734_336),
         (134_515_008, 138_045_888), (0.52, 0.4), (0.36, 0.36), (30, 23), (1000.0, 1300.0), (20.0, 26.5),
         (269_060_000, 219_492_088), (0, 5), (24.456807237082618, 43.68125643919109), (1, 1e6)]


def _node_module(tmp_path: Path) -> Path:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    for path in STATIC.glob("*.js"):  # every module of the page parses
        subprocess.run([node, "--check", str(path)], check=True, timeout=60)
    module = tmp_path / "format.mjs"  # the same file, as an ES module node loads without a package.json
    module.write_text(FORMAT_JS.read_text(encoding="utf-8"), encoding="utf-8")
    return module


def _run(module: Path, body: str):
    script = f"import * as F from {json.dumps(module.as_uri())};\n{body}"
    out = subprocess.run([shutil.which("node"), "--input-type=module", "-e", script], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


def test_dashboard_js_port_prints_what_python_prints(tmp_path):
    module = _node_module(tmp_path)
    formats = ["bytes", "count", "int", "score", "ppl", "rate", "ratio", "number"]
    values = VALUES + FIGURES
    got = _run(module, f"""
const values = {json.dumps(values + [None])}, figures = {json.dumps(FIGURES)}, pairs = {json.dumps(PAIRS)};
const formats = {json.dumps(formats)};
console.log(JSON.stringify({{
  bytes: values.map(F.fmtBytes),
  count: values.map(F.humanCount),
  significant: figures.filter((x) => x > 0).map(F.significant),
  value: formats.map((f) => values.map((v) => F.formatValue(f, v))),
  change: formats.map((f) => pairs.map(([b, a]) => F.formatChange(f, b, a))),
  verdict: ["lower", "higher", null].map((g) => pairs.map(([b, a]) => F.verdict(g, b, a))),
}}));""")
    assert got["bytes"] == [human_bytes(v) for v in values + [None]]
    assert got["count"] == [units.human_count(v) for v in values + [None]]
    assert got["significant"] == [units.significant(x) for x in FIGURES if x > 0]
    assert got["value"] == [[units.format_value(f, v) for v in values + [None]] for f in formats]
    assert got["change"] == [[units.format_change(f, b, a) for b, a in PAIRS] for f in formats]
    assert got["verdict"] == [[units.verdict(g, b, a) for b, a in PAIRS] for g in ("lower", "higher", None)]


def test_python_rules_for_figures():
    # An exact tie rounds away from zero, as JS does (Python's own format rounds half to even).
    assert units.fixed(0.125, 2) == "0.13" and f"{0.125:.2f}" == "0.12"
    assert units.format_value("ppl", 24_925_910.06) == "2.49e+7" and units.format_value("ppl", 18.987) == "18.99"
    assert units.format_change("ppl", 18.99, 12_399.34) == "x653"  # the README's demo table
    assert units.format_change("count", 134_515_008, 109_734_336) == "-18.4%"
    # More parameters is worse, whatever the sign of the number: the dashboard's colour follows this.
    assert units.verdict("lower", 134_515_008, 138_045_888) == "bad"
    assert units.verdict("higher", 0.36, 0.40) == "good" and units.verdict("lower", 41.5, 20.2) == "good"
    assert units.field("exact_match,strict-match")["good"] == "higher"
    assert units.field("acc_stderr")["good"] is None  # not a score: never judged


def test_prune_only_table_shows_the_size_before():
    result = {"num_layers_before": 30, "num_layers_after": 25, "params_before": 134_515_008,
              "params_after": 117_000_000, "size_bytes_before": 269_060_000, "size_bytes_after": 234_000_000,
              "metrics": {}, "removed_layers": [25, 26, 27, 28, 29]}
    row = next(line for line in summary_table(result).splitlines() if line.startswith("size on disk"))
    assert row.split()[3:7] == ["269.1", "MB", "234.0", "MB"]
