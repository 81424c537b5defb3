"""prune_model end to end: every path (streamed, scored in memory, iterative, healed between rounds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from layerprune.core.errors import Cancelled, ModelSourceError, SpecError
from layerprune.core.export import write_model_card_and_record
from layerprune.core.hooks import Hooks
from layerprune.core.prune import prune_model
from layerprune.core.scoring import magnitude_scores_from_files
from layerprune.core.sources import resolve_model
from layerprune.core.spec import PruneSpec
from tests.tiny import LAYERS, save_tiny

SMALL_CALIBRATION = {"num_samples": 2, "seq_len": 16}


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _assert_kept_layers_identical(src: Path, out: Path, removed: list[int], prefix: str = "model.layers.") -> None:
    a, b = _tensors(src), _tensors(out)
    keep = [i for i in range(LAYERS) if i not in removed]
    for key, value in b.items():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            original = a[f"{prefix}{keep[int(j)]}.{rest}"]
        else:
            original = a[key]
        assert value.dtype == original.dtype and torch.equal(value, original), key


@pytest.mark.parametrize(
    "spec, removed",
    [({"metric": "reverse_order"}, [6, 7]),  # floor(0.25 × 8) = 2
     ({"metric": "manual", "layers": [5, 1]}, [1, 5]),
     ({"metric": "reverse_order", "num_layers": 2, "protect_layers": [7]}, [5, 6]),
     ({"metric": "reverse_order", "num_layers": 3, "iterative_step": 2}, [5, 6, 7])],
)
def test_streamed_selections(spec: dict, removed: list[int], tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("llama")
    result = prune_model(src, PruneSpec(**spec), tmp_path / "out")
    assert result.removed_layers == removed and result.streamed
    assert result.num_layers_after == LAYERS - len(removed) == AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers
    assert result.layer_scores == [None] * LAYERS and result.calibration is None
    _assert_kept_layers_identical(src, tmp_path / "out", removed)
    json.dumps(result.to_dict())  # JSON-safe for the job's result


def test_iterative_rounds_report_original_numbering(tiny_dirs, tmp_path: Path) -> None:
    result = prune_model(tiny_dirs("llama"), PruneSpec(metric="reverse_order", num_layers=3, iterative_step=1),
                         tmp_path / "out")
    assert [r["removed"] for r in result.rounds] == [[7], [6], [5]]
    assert [r["num_layers"] for r in result.rounds] == [8, 7, 6]
    assert result.rounds[2]["layers"] == [0, 1, 2, 3, 4, 5]


def test_random_is_reproducible_by_seed(tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("llama")
    runs = [prune_model(src, PruneSpec(metric="random", num_layers=3, seed=s), tmp_path / f"r{i}").removed_layers
            for i, s in enumerate((7, 7, 8))]
    assert runs[0] == runs[1] and len(set(runs[0])) == 3 and len(set(runs[2])) == 3


def test_magnitude_from_files_iterative_equals_one_shot(tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("qwen2")
    scores = magnitude_scores_from_files(src, 2, "paper")
    one = prune_model(src, PruneSpec(metric="magnitude_l2", num_layers=3), tmp_path / "one")
    it = prune_model(src, PruneSpec(metric="magnitude_l2", num_layers=3, iterative_step=1), tmp_path / "it")
    assert one.removed_layers == it.removed_layers == sorted(sorted(range(LAYERS), key=lambda i: scores[i])[:3])
    assert one.streamed and one.layer_scores == pytest.approx(scores)
    _assert_kept_layers_identical(src, tmp_path / "one", one.removed_layers)


def _scale_layer(model_dir: Path, out_dir: Path, layer: int, factor: float) -> Path:
    """A real 'healing' step: rewrite the weights with one layer scaled (changes its magnitude)."""
    shutil.copytree(model_dir, out_dir)
    tensors = _tensors(model_dir)
    prefix = f"model.layers.{layer}."
    scaled = {k: (v * factor if k.startswith(prefix) else v).contiguous() for k, v in tensors.items()}
    for f in out_dir.glob("*.safetensors"):
        f.unlink()
    save_file(scaled, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


def test_heal_between_rounds_rescores_the_healed_model(tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("llama")
    scores = magnitude_scores_from_files(src, 1, "paper")
    a, b, c = sorted(range(LAYERS), key=lambda i: scores[i])[:3]
    calls: list[tuple[int, int]] = []

    def heal_round(pruned: Path, round_index: int) -> Path:
        layers = AutoConfig.from_pretrained(pruned).num_hidden_layers
        calls.append((round_index, layers))
        # Make original layer b (now at position b - (a < b)) heavy, so round 2 must pick c.
        return _scale_layer(pruned, tmp_path / f"healed_{round_index}", b - (a < b), 100.0)

    spec = PruneSpec(metric="magnitude_l1", num_layers=2, iterative_step=1, heal_between_rounds=True)
    result = prune_model(src, spec, tmp_path / "out", heal_round=heal_round)
    assert calls == [(0, LAYERS - 1)]  # between rounds only, never after the last
    assert result.removed_layers == sorted([a, c])
    assert [r["removed"] for r in result.rounds] == [[a], [c]]
    assert not (tmp_path / "out_rounds").exists()  # intermediate round directories are cleaned up
    out = _tensors(tmp_path / "out")
    kept = [i for i in range(LAYERS) if i not in (a, c)]
    # The output carries the healed weights: original layer b is the scaled one.
    j = kept.index(b)
    assert torch.equal(out[f"model.layers.{j}.mlp.up_proj.weight"],
                       _tensors(src)[f"model.layers.{b}.mlp.up_proj.weight"] * 100.0)


def test_scored_in_memory_keeps_dtype_and_records_calibration(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "bf16", "qwen3", dtype=torch.bfloat16)
    spec = PruneSpec(metric="block_influence", num_layers=2, calibration=SMALL_CALIBRATION)
    progress: list[str] = []
    result = prune_model(src, spec, tmp_path / "out", Hooks(progress=lambda d, t, m: progress.append(m)))
    assert not result.streamed and len(result.removed_layers) == 2
    assert all(s is not None for s in result.layer_scores)
    cal = result.calibration
    assert cal is not None and cal["num_samples"] == 2 and cal["seq_len"] == 16 and len(cal["sha256"]) == 64
    assert cal["dataset"] == "bundled:wikipedia-calibration"
    # Scored in fp32 on CPU, but written from the files: bf16 and bit-identical.
    _assert_kept_layers_identical(src, tmp_path / "out", result.removed_layers)
    assert progress and result.timings["score"] > 0


def test_iterative_taylor_in_memory(tiny_dirs, tmp_path: Path) -> None:
    spec = PruneSpec(metric="taylor", num_layers=2, iterative_step=1, protect_layers=[7],
                     calibration=SMALL_CALIBRATION)
    result = prune_model(tiny_dirs("gpt2"), spec, tmp_path / "out")
    assert len(result.rounds) == 2 and 7 not in result.removed_layers
    assert result.rounds[1]["num_layers"] == LAYERS - 1 and len(result.rounds[1]["scores"]) == LAYERS - 1
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and len(model.transformer.h) == LAYERS - 2


def test_angular_removes_a_contiguous_block(tiny_dirs, tmp_path: Path) -> None:
    spec = PruneSpec(metric="angular", num_layers=3, calibration=SMALL_CALIBRATION)
    result = prune_model(tiny_dirs("llama"), spec, tmp_path / "out")
    start = result.removed_layers[0]
    assert result.removed_layers == [start, start + 1, start + 2]
    assert result.layer_scores[LAYERS - 2:] == [None, None]  # no block of 3 starts there


@pytest.mark.parametrize(
    "spec, param",
    [({"metric": "reverse_order", "num_layers": LAYERS}, "prune.num_layers"),
     ({"metric": "reverse_order", "num_layers": 3, "protect_layers": [0, 1, 2, 3, 4, 5]}, "prune.protect_layers"),
     ({"metric": "manual", "layers": [LAYERS]}, "prune.layers"),
     ({"metric": "reverse_order", "ratio": 0.1}, "prune.ratio")],
)
def test_bad_specs(spec: dict, param: str, tiny_dirs, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        prune_model(tiny_dirs("llama"), PruneSpec(**spec), tmp_path / "out")
    assert err.value.param == param


def test_missing_model_and_cancel(tiny_dirs, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError):
        prune_model(tmp_path / "nothing", PruneSpec(), tmp_path / "out")
    with pytest.raises(Cancelled):
        prune_model(tiny_dirs("llama"), PruneSpec(), tmp_path / "out", Hooks(should_stop=lambda: True))


@pytest.mark.slow
def test_bundled_reverse_order_quarter_streamed(bundled_dir: Path, tmp_path: Path) -> None:
    """The real SmolLM2: reverse order 25% of 30 layers = floor(7.5) = 7 → layers 23..29, streamed."""
    out = tmp_path / "out"
    result = prune_model(bundled_dir, PruneSpec(metric="reverse_order", ratio=0.25), out)
    assert result.removed_layers == list(range(23, 30)) and result.streamed
    assert (result.num_layers_before, result.num_layers_after) == (30, 23)
    per_layer = 3 * 576 * 1536 + 576 * 576 * 2 + 576 * 192 * 2 + 2 * 576  # mlp + q,o + k,v + 2 norms
    assert result.params_before - result.params_after == 7 * per_layer
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype="auto")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16 and len(model.model.layers) == 23
    src, dst = _tensors(bundled_dir), _tensors(out)
    assert torch.equal(src["model.layers.22.mlp.down_proj.weight"], dst["model.layers.22.mlp.down_proj.weight"])
    assert torch.equal(src["model.embed_tokens.weight"], dst["model.embed_tokens.weight"])
    ids = torch.tensor([[1, 504, 3458, 314, 260]])
    model = model.float().eval()
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        plain = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)
    source = resolve_model("bundled:smollm2-135m-instruct")
    write_model_card_and_record(out, {"base_model": source.to_dict(), "prune": result.to_dict()})
    assert "license: apache-2.0" in (out / "README.md").read_text()
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()


@pytest.mark.slow
def test_bundled_block_influence_in_memory(bundled_dir: Path, tmp_path: Path) -> None:
    spec = PruneSpec(metric="block_influence", num_layers=2, calibration={"num_samples": 2, "seq_len": 32})
    result = prune_model(bundled_dir, spec, tmp_path / "out")
    assert not result.streamed and len(result.removed_layers) == 2
    # Layer 0 is the most important layer of this model (removing it: ppl 38,680).
    assert 0 not in result.removed_layers
    assert AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == 28


def test_heal_between_rounds_with_a_data_metric_reloads_the_model(tiny_dirs, tmp_path: Path) -> None:
    healed: list[Path] = []

    def heal_round(pruned: Path, round_index: int) -> Path:
        target = tmp_path / f"healed_{round_index}"
        shutil.copytree(pruned, target)  # identity healing: the next round scores this directory
        healed.append(target)
        return target

    spec = PruneSpec(metric="block_influence", num_layers=3, iterative_step=2, heal_between_rounds=True,
                     calibration=SMALL_CALIBRATION)
    result = prune_model(tiny_dirs("mistral"), spec, tmp_path / "out", heal_round=heal_round)
    assert len(healed) == 1 and [len(r["removed"]) for r in result.rounds] == [2, 1]
    assert result.rounds[1]["num_layers"] == LAYERS - 2 and len(result.removed_layers) == 3
    assert AutoConfig.from_pretrained(healed[0]).num_hidden_layers == LAYERS - 2
    assert AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == LAYERS - 3
