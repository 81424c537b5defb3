"""core.pipeline on a tiny model: stage order, resumable markers, outputs, data set refs, errors."""

from __future__ import annotations

import json

import pytest

from layerprune.core.bundled import bundled_text
from layerprune.core.errors import Cancelled, SpecError
from layerprune.core.hooks import Hooks
from layerprune.core.pipeline import run_pipeline, stages_of
from layerprune.core.sources import resolve_model
from layerprune.core.spec import JobSpec

PRUNE = {"metric": "reverse_order", "num_layers": 2}
TRAIN = {"method": "partial", "max_steps": 1, "batch_size": 1, "micro_batch_size": 1, "max_seq_len": 256,
         "warmup_steps": 0, "trainable_last_layers": 1}
PPL = {"perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 32, "max_windows": 1}}


def _run(tiny_root, work, spec_body, **kw):
    spec = JobSpec.model_validate({"model": str(tiny_root / "tiny"), **spec_body})
    source = resolve_model(spec.model, None, model_roots=[tiny_root])
    stages: list[str] = []
    result = run_pipeline(spec, source, work, kw.pop("hooks", Hooks()), on_stage=kw.pop("on_stage", stages.append), **kw)
    return result, stages


def test_prune_evaluate_then_rerun_skips_finished_stages(tiny_root, tmp_path):
    result, stages = _run(tiny_root, tmp_path, {"prune": PRUNE, "evaluate": PPL})
    assert stages == ["prune", "evaluate", "export"]
    assert result["removed_layers"] == [6, 7] and result["num_layers_after"] == 6
    assert result["metrics"]["before"]["perplexity"]["value"] > 0
    assert result["metrics"]["deltas"]["perplexity"]["delta"] == pytest.approx(
        result["metrics"]["after"]["perplexity"]["value"] - result["metrics"]["before"]["perplexity"]["value"])
    out = tmp_path / "output"
    record = json.loads((out / "layerprune.json").read_text())
    assert record["prune"]["removed_layers"] == [6, 7] and (out / "README.md").is_file()
    assert (out / "model.safetensors").is_file()
    again, stages2 = _run(tiny_root, tmp_path, {"prune": PRUNE, "evaluate": PPL})
    assert stages2 == []  # every stage's marker is there: nothing runs twice
    assert again["removed_layers"] == result["removed_layers"] and again["metrics"] == result["metrics"]


def test_interrupted_job_resumes_after_the_last_finished_stage(tiny_root, tmp_path):
    def stop_at_finetune(stage: str) -> None:
        if stage == "finetune":
            raise Cancelled()

    with pytest.raises(Cancelled):
        _run(tiny_root, tmp_path, {"prune": PRUNE, "finetune": TRAIN}, on_stage=stop_at_finetune)
    assert (tmp_path / "stage_prune.json").is_file() and not (tmp_path / "stage_finetune.json").exists()
    result, stages = _run(tiny_root, tmp_path, {"prune": PRUNE, "finetune": TRAIN})
    assert stages == ["finetune", "export"]
    assert result["finetune"] is not None and result["prune"]["removed_layers"] == [6, 7]


def test_evaluate_only_publishes_metrics_not_the_model(tiny_root, tmp_path):
    result, stages = _run(tiny_root, tmp_path, {"evaluate": PPL})
    assert stages == ["evaluate", "export"]
    assert result["output_kind"] == "metrics" and result["removed_layers"] == []
    assert result["metrics"]["before"] is None and result["metrics"]["after"]["perplexity"]["value"] > 0
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["layerprune.json", "metrics.json"]


def test_uploaded_file_refs_are_substituted(tiny_root, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}."} for w in ("yes", "no", "maybe")]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    result, _ = _run(tiny_root, tmp_path / "w", {"finetune": {**TRAIN, "dataset": "file_abc"}},
                     dataset_paths={"file_abc": data})
    assert result["finetune"] is not None and result["num_layers_after"] == 8


def test_an_uploaded_calibration_file_is_substituted(tiny_root, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("\n\n".join(bundled_text("wikipedia-train")[:40]))
    calibration = {"dataset": "file_cal", "num_samples": 2, "seq_len": 16}
    result, _ = _run(tiny_root, tmp_path / "w", {"prune": {"metric": "angular", "num_layers": 2,
                                                           "calibration": calibration}},
                     dataset_paths={"file_cal": text})
    provenance = result["prune"]["calibration"]
    assert provenance["dataset"] == str(text) and provenance["num_samples"] == 2 and len(provenance["sha256"]) == 64
    record = json.loads((tmp_path / "w" / "output" / "layerprune.json").read_text())
    assert set(record["spec"]) == {"model", "revision", "prune", "finetune", "evaluate"}  # core's spec only


def test_iterative_pruning_heals_between_rounds(tiny_root, tmp_path):
    body = {"prune": {**PRUNE, "iterative_step": 1, "heal_between_rounds": True}, "finetune": TRAIN}
    result, stages = _run(tiny_root, tmp_path, body)
    assert stages == ["prune", "finetune", "export"] and result["num_layers_after"] == 6
    assert (tmp_path / "heal_round_0").is_dir()  # round 0 of 2 healed before round 1


def test_impossible_finetune_is_refused_before_pruning(tiny_root, tmp_path):
    with pytest.raises(SpecError) as err:
        _run(tiny_root, tmp_path, {"prune": PRUNE, "finetune": {**TRAIN, "trainable_last_layers": 7}})
    assert err.value.param and err.value.param.startswith("finetune.")
    assert not (tmp_path / "prune").exists()


def test_stages_of():
    spec = JobSpec.model_validate({"prune": PRUNE, "finetune": {"method": "none"}})
    assert stages_of(spec) == ["prune", "export"]
