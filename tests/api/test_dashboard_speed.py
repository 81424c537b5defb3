"""The dashboard's before/after table shows measured speed as tok/s rows with the speed-up (Node, the page's own module)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from layerprune.core.units import fields_json

NODE = shutil.which("node")
STATIC = Path(__file__).resolve().parents[2] / "layerprune" / "api" / "static"


def _speed(prefill: float, decode: float) -> dict:
    return {"device": "cpu", "dtype": "float32", "threads": 2, "settings": {"repeats": 3, "warmup": 1},
            "batches": {"1": {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "prefill_s": 0.1,
                              "decode_s": 1.0}}}


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_speed_rows_show_tok_s_and_the_speed_up(tmp_path: Path) -> None:
    metrics = {"before": {"perplexity": {"value": 20.0}, "speed": _speed(1000.0, 20.0)},
               "after": {"perplexity": {"value": 22.0}, "speed": _speed(1300.0, 18.0)},
               "deltas": {"speed": {"batches": {"1": {"prefill_tokens_per_s": {"ratio": 1.3},
                                                      "decode_tokens_per_s": {"ratio": 0.9}}}}}}
    for name in ("format", "summary"):  # loadable by node as ES modules
        text = (STATIC / f"{name}.js").read_text().replace('from "./format.js"', 'from "./format.mjs"')
        (tmp_path / f"{name}.mjs").write_text(text)
    script = f"""import {{ comparisonRows }} from {json.dumps((tmp_path / "summary.mjs").as_uri())};
const rows = comparisonRows({json.dumps({"metrics": metrics})}, {json.dumps(fields_json())});
console.log(JSON.stringify(rows.map((r) => [r.key, r.label, r.unit, r.beforeText, r.afterText, r.changeText, r.verdict])));"""
    out = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60,
                         check=True)
    rows = {r[0]: r[1:] for r in json.loads(out.stdout)}
    # Settings, seconds and threads are not rows; the two figures are, labelled, with their ratio.
    assert set(rows) == {"perplexity", "speed.1.prefill_tokens_per_s", "speed.1.decode_tokens_per_s"}
    # The same text the CLI's speed rows print (core.units, the one formatter): rate figures, x ratio.
    assert rows["speed.1.prefill_tokens_per_s"] == ["prefill speed (batch 1)", "tok/s", "1000.0", "1300.0", "x1.30",
                                                    "good"]
    assert rows["speed.1.decode_tokens_per_s"] == ["decode speed (batch 1)", "tok/s", "20.0", "18.0", "x0.90", "bad"]
