"""evaluate.speed: the spec, measured figures on tiny models, and the after/before ratios (no wall-clock asserts)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from layerprune.core.errors import SpecError
from layerprune.core.evaluate import compare_results
from layerprune.core.evaluate.speed import FIGURES, compare_speed, measure_speed
from layerprune.core.spec import EvaluateSpec, SpeedSpec
from tests.tiny import tiny_model

SMALL = SpeedSpec(prompt_tokens=8, new_tokens=3, batch_sizes=[1, 2], repeats=2, warmup=1)


def test_speed_switch_and_defaults() -> None:
    assert EvaluateSpec(speed=True).speed == SpeedSpec()
    assert SpeedSpec().batch_sizes == [1, 8] and SpeedSpec().repeats >= 1
    assert EvaluateSpec(speed=False, tasks=["piqa"]).speed is None
    assert EvaluateSpec(tasks=["piqa"]).speed is None
    spec = EvaluateSpec.model_validate({"speed": {"batch_sizes": [4], "new_tokens": 5}})
    assert spec.speed is not None and spec.speed.batch_sizes == [4] and spec.speed.new_tokens == 5
    assert EvaluateSpec.model_validate_json(spec.model_dump_json()) == spec  # the stored spec reads back
    with pytest.raises(SpecError) as err:
        EvaluateSpec(speed=False)  # nothing left to evaluate
    assert err.value.param == "evaluate"


@pytest.mark.parametrize("speed,field", [
    ({"prompt_tokens": 0}, "prompt_tokens"), ({"new_tokens": 0}, "new_tokens"), ({"batch_sizes": []}, "batch_sizes"),
    ({"batch_sizes": [1, 1]}, "batch_sizes"), ({"batch_sizes": [0]}, "batch_sizes"), ({"repeats": 0}, "repeats"),
    ({"warmup": -1}, "warmup"), ({"threads": 4}, "threads"),
])
def test_bad_speed_settings_name_the_field(speed, field) -> None:
    with pytest.raises(ValidationError) as err:
        EvaluateSpec.model_validate({"speed": speed})
    assert err.value.errors()[0]["loc"][:2] == ("speed", field)


def test_two_models_measured_interleaved_give_positive_figures_and_ratios() -> None:
    before, after = tiny_model("llama"), tiny_model("llama", seed=1)
    del after.model.layers[6:]  # a pruned stand-in: fewer layers, same vocabulary
    after.config.num_hidden_layers = 6
    figures = measure_speed([before, after], SMALL)
    json.dumps(figures)  # stored as JSON in the job result
    assert len(figures) == 2
    for fig in figures:
        assert fig["device"] == "cpu" and fig["dtype"] == "float32" and fig["threads"] >= 1
        assert fig["settings"] == {**SMALL.model_dump(), "interleaved": True}
        assert set(fig["batches"]) == {"1", "2"}
        for row in fig["batches"].values():
            for name in FIGURES:
                assert row[name] > 0 and len(row["runs"][name]) == SMALL.repeats
                assert min(row["runs"][name]) <= row[name] <= max(row["runs"][name])  # the median
            assert row["prefill_s"] > 0 and row["decode_s"] > 0
    # Tokens/s is tokens over seconds: batch × prompt for prefill, batch × new tokens for decode.
    row = figures[0]["batches"]["2"]
    assert row["prefill_tokens_per_s"] == pytest.approx(2 * 8 / row["prefill_s"])
    assert row["decode_tokens_per_s"] == pytest.approx(2 * 3 / row["decode_s"])
    deltas = compare_results({"speed": figures[0]}, {"speed": figures[1]})["speed"]
    for b in ("1", "2"):
        for name in FIGURES:
            d = deltas["batches"][b][name]
            x, y = figures[0]["batches"][b][name], figures[1]["batches"][b][name]
            assert d == {"before": x, "after": y, "delta": pytest.approx(y - x), "ratio": pytest.approx(y / x)}


def test_compare_speed_is_after_over_before() -> None:
    b = {"batches": {"1": {"prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0}}}
    a = {"batches": {"1": {"prefill_tokens_per_s": 125.0, "decode_tokens_per_s": 12.0},
                     "8": {"prefill_tokens_per_s": 1.0, "decode_tokens_per_s": 1.0}}}
    out = compare_speed(b, a)
    assert out == {"batches": {"1": {"prefill_tokens_per_s": {"before": 100.0, "after": 125.0, "delta": 25.0, "ratio": 1.25},
                                     "decode_tokens_per_s": {"before": 10.0, "after": 12.0, "delta": 2.0,
                                                             "ratio": pytest.approx(1.2)}}}}
    assert compare_speed(None, a) is None
    assert "speed" not in compare_results({"params": 1}, {"params": 1, "speed": a})  # one side only: no comparison


def test_prompt_longer_than_the_model_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as err:
        measure_speed([tiny_model("llama")], SpeedSpec(prompt_tokens=510, new_tokens=8))  # 512 positions
    assert err.value.param == "evaluate.speed.prompt_tokens"


def test_evaluate_model_with_only_speed(tiny_dirs) -> None:
    from layerprune.core.evaluate import evaluate_model

    res = evaluate_model(tiny_dirs("llama"), EvaluateSpec(speed=SMALL), device="cpu")
    assert res["perplexity"] is None and res["tasks"] == {}
    assert res["speed"]["batches"]["1"]["decode_tokens_per_s"] > 0 and "speed_s" in res["timings"]
    assert "speed" not in evaluate_model(tiny_dirs("llama"), EvaluateSpec(speed=SMALL), device="cpu", with_speed=False)


def test_generation_tokens_per_s_is_the_batch_1_decode_figure() -> None:
    # evaluate_model reports it on CUDA only; the measurement itself is device-agnostic.
    from layerprune.core.evaluate.speed import generation_tokens_per_s

    assert generation_tokens_per_s(tiny_model("llama"), new_tokens=4) > 0
