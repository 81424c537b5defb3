"""One size formatter: the CLI's and the model card's (core.units) and the dashboard's JS port
print the same string for every value, checked by running the page's own function in node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from layerprune.cli.render import human_bytes, summary_table
from layerprune.core import units

DASHBOARD_JS = Path(units.__file__).resolve().parents[1] / "api" / "static" / "dashboard.js"

VALUES = [0, 1, 12, 999, 1000, 1049, 1050, 1250, 1350, 9_999, 99_950, 999_949, 999_950, 1_000_000,
          1_049_999, 1_050_000, 134_515_008, 209_400_000, 219_521_152, 269_060_000, 999_999_999,
          1_000_000_000, 1_250_000_000, 12_345_678_901_234, 7.4, 1249.5, 1250.5, -1250]


def test_python_rule():
    assert human_bytes(None) == "-" and human_bytes(12) == "12 B" and human_bytes(999) == "999 B"
    assert human_bytes(1000) == "1.0 kB"
    assert human_bytes(1250) == "1.3 kB"  # an exact tie rounds up (f"{1.25:.1f}" gives "1.2")
    assert human_bytes(219_521_152) == "219.5 MB"  # the bundled model's weights; 209.4 MiB before
    assert human_bytes(1_250_000_000) == "1.3 GB" and human_bytes(-1250) == "-1.3 kB"


def test_dashboard_js_port_prints_what_python_prints():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    subprocess.run([node, "--check", str(DASHBOARD_JS)], check=True, timeout=60)  # the whole page parses
    source = DASHBOARD_JS.read_text(encoding="utf-8")
    match = re.search(r"^function fmtBytes\(n\) \{\n.*?^\}\n", source, re.S | re.M)
    assert match, "fmtBytes not found in dashboard.js"
    script = match.group(0) + f"console.log(JSON.stringify({json.dumps(VALUES + [None])}.map(fmtBytes)));"
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == [human_bytes(v) for v in VALUES + [None]]


def test_prune_only_table_shows_the_size_before():
    result = {"num_layers_before": 30, "num_layers_after": 25, "params_before": 134_515_008,
              "params_after": 117_000_000, "size_bytes_before": 269_060_000, "size_bytes_after": 234_000_000,
              "metrics": {}, "removed_layers": [25, 26, 27, 28, 29]}
    row = next(line for line in summary_table(result).splitlines() if line.startswith("size on disk"))
    assert row.split()[3:7] == ["269.1", "MB", "234.0", "MB"]
