"""The CLI's before/after table shows measured speed as tokens/s with the speed-up from deltas."""

from __future__ import annotations

from layerprune.cli.render import metric_pairs, summary_table


def _speed(prefill: float, decode: float) -> dict:
    return {"device": "cpu", "dtype": "float32", "threads": 2,
            "settings": {"prompt_tokens": 128, "new_tokens": 32, "batch_sizes": [1, 8], "repeats": 3, "warmup": 1},
            "batches": {"1": {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "prefill_s": 0.1,
                              "decode_s": 1.0, "runs": {"prefill_tokens_per_s": [prefill]}}}}


def test_speed_rows_carry_the_ratio_from_deltas() -> None:
    metrics = {"before": {"num_layers": 30, "speed": _speed(1000.0, 20.0)},
               "after": {"num_layers": 23, "speed": _speed(1300.0, 26.5)},
               "deltas": {"speed": {"batches": {"1": {
                   "prefill_tokens_per_s": {"before": 1000.0, "after": 1300.0, "delta": 300.0, "ratio": 1.3},
                   "decode_tokens_per_s": {"before": 20.0, "after": 26.5, "delta": 6.5, "ratio": 1.325}}}}}}
    text = summary_table({"metrics": metrics})
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    assert "1000.0" in lines["prefill tok/s (batch 1)"] and "x1.30" in lines["prefill tok/s (batch 1)"]
    assert "26.5" in lines["decode tok/s (batch 1)"] and "x1.32" in lines["decode tok/s (batch 1)"]
    # Settings and seconds are not scores: no stray "speed threads" or "speed warmup" rows.
    assert not any("speed" in name for name in metric_pairs(metrics))


def test_speed_without_a_before_side_has_no_speed_up() -> None:
    text = summary_table({"metrics": {"before": None, "after": {"speed": _speed(900.0, 18.0)}, "deltas": None}})
    row = next(line for line in text.splitlines() if line.startswith("decode tok/s (batch 1)"))
    assert "18.0" in row and "x" not in row.replace("tok/s", "")
