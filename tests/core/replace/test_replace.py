"""prune.replace "linear": fitted maps replace removed runs and fold exactly into the kept block before each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.errors import SpecError
from layerprune.core.hooks import Hooks
from layerprune.core.prune import prune_model
from layerprune.core.replace.collect import ChunkStore
from layerprune.core.replace.fit import accumulate, evaluate, optimise_cosine, solve
from layerprune.core.replace.plan import find_site, runs_of
from layerprune.core.replace.write import fit_maps, write_with_maps
from layerprune.core.spec import JobSpec, PruneSpec, ReplaceSpec
from layerprune.core.streaming import stream_prune
from tests.tiny import HIDDEN, LAYERS, VOCAB

FOLDABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox")
REFUSED = ("gemma2", "gemma3", "olmo2")
SMALL_CALIBRATION = {"num_samples": 3, "seq_len": 24}
REMOVED = [2, 3, 6]  # two runs: 2..3 folded into block 1, 6 folded into block 5


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _load(path: Path):  # type: ignore[no-untyped-def]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _random_map(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.eye(HIDDEN, dtype=torch.float64) + 0.2 * torch.randn(HIDDEN, HIDDEN, generator=gen,
                                                                      dtype=torch.float64) / HIDDEN**0.5


def _hooked_logits(model, removed: list[int], maps: dict[int, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """The unfolded model with each map applied by hooks: the kept block's MLP output becomes m·T and
    every removed block passes its input through unchanged."""
    parts = find_decoder_parts(model)
    handles = []

    def skip(module, args, kwargs, output):  # type: ignore[no-untyped-def]
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    def apply(t: torch.Tensor):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            return (output.double() @ t).to(output.dtype)
        return hook

    for i in removed:
        handles.append(parts.layers[i].register_forward_hook(skip, with_kwargs=True))
    for block, t in maps.items():
        handles.append(find_site(parts.layers, block, HIDDEN).module.register_forward_hook(apply(t)))
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", FOLDABLE)
def test_folded_model_equals_the_unfolded_model_with_the_maps_applied(family: str, tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs(family)
    model = _load(src)
    parts = find_decoder_parts(model)
    runs = runs_of(REMOVED)
    sites = [find_site(parts.layers, r.kept, HIDDEN) for r in runs]
    maps = [_random_map(r.kept) for r in runs]
    write_with_maps(src, tmp_path / "out", REMOVED, parts.layers_path + ".", sites, maps)
    folded = _load(tmp_path / "out")
    assert len(find_decoder_parts(folded).layers) == LAYERS - len(REMOVED)
    ids = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = folded(input_ids=ids, use_cache=False).logits
    want = _hooked_logits(model, REMOVED, {r.kept: t for r, t in zip(runs, maps, strict=True)}, ids)
    plain = _hooked_logits(model, REMOVED, {}, ids)
    assert (want - plain).abs().max() > 1e-2  # the maps matter: the comparison below is not vacuous
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_identity_maps_give_plain_removal_bit_for_bit(family: str, tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs(family)
    model = _load(src)
    parts = find_decoder_parts(model)
    runs = runs_of(REMOVED)
    sites = [find_site(parts.layers, r.kept, HIDDEN) for r in runs]
    eye = [torch.eye(HIDDEN, dtype=torch.float64) for _ in runs]
    write_with_maps(src, tmp_path / "mapped", REMOVED, parts.layers_path + ".", sites, eye)
    stream_prune(src, tmp_path / "plain", REMOVED)
    a, b = _tensors(tmp_path / "mapped"), _tensors(tmp_path / "plain")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _synthetic_chunks(n: int, d: int, seed: int, sizes: list[int]) -> tuple[list[tuple[torch.Tensor, ...]], ...]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=gen)
    m = torch.randn(n, d, generator=gen) * torch.linspace(0.1, 3, d)  # unequal scales: a real conditioning
    y = a + m @ torch.randn(d, d, generator=gen) + 0.1 * torch.randn(n, d, generator=gen)
    chunks, s = [], 0
    for size in sizes:
        chunks.append((a[s:s + size], m[s:s + size], y[s:s + size]))
        s += size
    assert s == n
    return chunks, (a, m, y)


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_lstsq_equals_a_float64_dense_solve(ridge: float) -> None:
    chunks, (a, m, y) = _synthetic_chunks(200, 16, 0, [64, 64, 64, 8])
    eq = accumulate(lambda: chunks, 16, chunk_tokens=1000)
    t, lam = solve(eq, ridge)
    m64, r64 = m.double(), y.double() - a.double()
    # Ridge as ordinary least squares on the augmented system [M; √λ·I] T = [R; 0], via LAPACK's gelsd.
    aug_m = torch.cat([m64, lam**0.5 * torch.eye(16, dtype=torch.float64)])
    aug_r = torch.cat([r64, torch.zeros(16, 16, dtype=torch.float64)])
    want = torch.linalg.lstsq(aug_m, aug_r, driver="gelsd").solution
    torch.testing.assert_close(t, want, atol=1e-9, rtol=1e-9)
    assert (lam == 0.0) == (ridge == 0.0)


def test_rank_deficient_lstsq_is_the_minimum_norm_solution() -> None:
    chunks, (a, m, y) = _synthetic_chunks(10, 16, 1, [10])  # 10 tokens, 16 unknowns per column
    t, _ = solve(accumulate(lambda: chunks, 16, chunk_tokens=4), 0.0)
    want = torch.linalg.pinv(m.double()) @ (y.double() - a.double())
    torch.testing.assert_close(t, want, atol=1e-6, rtol=1e-6)


def test_chunked_accumulation_equals_one_shot() -> None:
    chunks, _ = _synthetic_chunks(300, 24, 2, [7, 100, 93, 100])
    one = accumulate(lambda: chunks, 24, chunk_tokens=10_000)
    small = accumulate(lambda: chunks, 24, chunk_tokens=5)
    whole = accumulate(lambda: [tuple(torch.cat(x) for x in zip(*chunks, strict=True))], 24, chunk_tokens=10_000)
    for eq in (small, whole):
        assert eq.tokens == one.tokens == 300
        torch.testing.assert_close(eq.gram, one.gram, atol=1e-9, rtol=1e-12)
        torch.testing.assert_close(eq.cross, one.cross, atol=1e-9, rtol=1e-12)


def test_cosine_objective_lowers_the_cosine_distance_of_the_lstsq_map() -> None:
    # Targets rescaled per token: cosine-invariant noise that pulls least squares off the cosine optimum.
    chunks, (a, m, y) = _synthetic_chunks(512, 16, 3, [128] * 4)
    gen = torch.Generator().manual_seed(4)
    scaled = [(ca, cm, cy * torch.exp(torch.randn(cy.shape[0], 1, generator=gen))) for ca, cm, cy in chunks]
    t, _ = solve(accumulate(lambda: scaled, 16, chunk_tokens=64), 0.0)
    before = evaluate(lambda: scaled, t, chunk_tokens=64)["cosine"]
    tc, losses = optimise_cosine(lambda: scaled, t, steps=200, learning_rate=1e-3, chunk_tokens=64)
    after = evaluate(lambda: scaled, tc, chunk_tokens=64)["cosine"]
    assert len(losses) == 200 and after > before + 1e-4


def test_fit_maps_on_a_tiny_model_reports_each_run(tiny_dirs, tmp_path: Path) -> None:
    model = _load(tiny_dirs("llama"))
    calibration = torch.randint(3, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    spec = ReplaceSpec(method="linear", objective="cosine", steps=30, learning_rate=1e-3, chunk_tokens=20)
    sites, maps, reports = fit_maps(model, runs_of(REMOVED), calibration, spec, batch_size=3, work_parent=tmp_path)
    assert [s.block for s in sites] == [1, 5] and [tuple(t.shape) for t in maps] == [(HIDDEN, HIDDEN)] * 2
    for rep in reports:
        assert rep["tokens"] == rep["report_tokens"] == 64
        assert rep["lstsq"]["cosine"] > rep["cosine_removed"] and rep["lstsq"]["residual"] < rep["residual_removed"]
        assert rep["cosine"] >= rep["lstsq"]["cosine"]  # never worse than least squares over all tokens
    assert list(tmp_path.iterdir()) == []  # the activation chunks are gone


def test_lstsq_fits_every_token_but_keeps_only_a_bounded_report_sample(tiny_dirs, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import layerprune.core.replace.write as write

    model = _load(tiny_dirs("llama"))
    calibration = torch.randint(3, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    spec = ReplaceSpec(method="linear", chunk_tokens=10)
    _, full, _ = fit_maps(model, runs_of([4]), calibration, spec, batch_size=1, work_parent=tmp_path)
    monkeypatch.setattr(write, "REPORT_TOKENS", 20)  # less than one batch: the sample is cut mid-batch
    _, bounded, (rep,) = fit_maps(model, runs_of([4]), calibration, spec, batch_size=1, work_parent=tmp_path)
    assert rep["tokens"] == 64 and rep["report_tokens"] == 20
    torch.testing.assert_close(bounded[0], full[0], atol=0, rtol=0)  # the map itself saw all 64 tokens


def test_chunk_store_round_trips_and_cleans_up(tmp_path: Path) -> None:
    with ChunkStore(tmp_path) as store:
        x = torch.randn(5, 4)
        store.append(0, x, 2 * x, 3 * x)
        (a, m, y), = list(store.chunks(0))
        assert torch.equal(a, x) and torch.equal(m, 2 * x) and torch.equal(y, 3 * x)
        assert list(store.chunks(1)) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("objective", ["lstsq", "cosine"])
def test_prune_model_replaces_and_records_the_fit(objective: str, tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("qwen2")
    spec = PruneSpec(metric="manual", layers=REMOVED, calibration=SMALL_CALIBRATION,
                     replace={"method": "linear", "objective": objective, "steps": 20})
    res = prune_model(src, spec, tmp_path / "out", device="cpu")
    assert res.removed_layers == REMOVED and not res.streamed and res.calibration is not None
    rep = res.replacement
    assert rep is not None and rep["objective"] == objective
    assert [r["layers"] for r in rep["runs"]] == [[2, 3], [6]]
    assert [r["folded_into"] for r in rep["runs"]] == ["model.layers.1.mlp.down_proj.weight",
                                                       "model.layers.3.mlp.down_proj.weight"]
    assert all(r["tokens"] == 3 * 24 for r in rep["runs"])
    json.dumps(res.to_dict())
    # Everything but the two folded projections is plain removal, byte for byte.
    stream_prune(src, tmp_path / "plain", REMOVED)
    a, b = _tensors(tmp_path / "out"), _tensors(tmp_path / "plain")
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert differ == ["model.layers.1.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]


def test_iterative_rounds_are_replaced_as_one_run_in_original_numbering(tiny_dirs, tmp_path: Path) -> None:
    spec = PruneSpec(metric="reverse_order", num_layers=3, iterative_step=1, calibration=SMALL_CALIBRATION,
                     replace="linear")
    res = prune_model(tiny_dirs("llama"), spec, tmp_path / "out", device="cpu")
    assert res.replacement is not None
    assert [(r["layers"], r["kept_layer"]) for r in res.replacement["runs"]] == [([5, 6, 7], 4)]


def test_rounds_healed_between_are_each_replaced_before_healing(tiny_dirs, tmp_path: Path) -> None:
    healed: list[int] = []

    def heal_round(pruned_dir: Path, r: int) -> Path:
        healed.append(r)
        return pruned_dir  # "healed in place": the next round scores and replaces this directory

    spec = PruneSpec(metric="reverse_order", num_layers=2, iterative_step=1, heal_between_rounds=True,
                     calibration=SMALL_CALIBRATION, replace="linear")
    res = prune_model(tiny_dirs("llama"), spec, tmp_path / "out", heal_round=heal_round, device="cpu")
    assert healed == [0] and res.replacement is not None
    assert [(r["round"], r["layers"], r["kept_layer"], r["folded_into"]) for r in res.replacement["runs"]] == [
        (0, [7], 6, "model.layers.6.mlp.down_proj.weight"), (1, [6], 5, "model.layers.5.mlp.down_proj.weight")]


@pytest.mark.parametrize("family, refused", [("llama", False), ("gpt_neox", False), ("gemma3", True)])
def test_additivity_check_in_bfloat16(family: str, refused: bool, tiny_dirs) -> None:
    from layerprune.core.replace.write import check_foldable

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs(family), dtype=torch.bfloat16).eval()
    ids = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    if refused:
        with pytest.raises(SpecError):
            check_foldable(model, ids)
    else:
        check_foldable(model, ids)


@pytest.mark.parametrize("family", REFUSED)
def test_post_norm_families_are_refused(family: str, tiny_dirs, tmp_path: Path) -> None:
    spec = PruneSpec(metric="reverse_order", num_layers=2, calibration=SMALL_CALIBRATION, replace="linear")
    with pytest.raises(SpecError) as err:
        prune_model(tiny_dirs(family), spec, tmp_path / "out", device="cpu")
    assert err.value.param == "prune.replace" and "norm" in err.value.message
    assert not (tmp_path / "out").exists()


def test_post_norm_family_is_refused_before_scoring(tiny_dirs, tmp_path: Path) -> None:
    calls = []
    hooks = Hooks(progress=lambda done, total, msg: calls.append(msg))
    spec = PruneSpec(metric="block_influence", num_layers=2, calibration=SMALL_CALIBRATION, replace="linear")
    with pytest.raises(SpecError) as err:
        prune_model(tiny_dirs("gemma2"), spec, tmp_path / "out", hooks, device="cpu")
    assert err.value.param == "prune.replace" and not any("scoring" in c for c in calls)


def test_a_run_at_layer_0_is_refused(tiny_dirs, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        runs_of([1, 0, 5])
    assert err.value.param == "prune.replace"
    with pytest.raises(SpecError) as err:  # knowable at submit: manual names layer 0
        PruneSpec(metric="manual", layers=[0, 3], replace="linear")
    assert err.value.param == "prune.replace"
    # Known only at run time: a tiny model whose layer 0 has the smallest weights, so magnitude picks it.
    src = tiny_dirs("llama")
    low = tmp_path / "low"
    low.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (low / f.name).write_bytes(f.read_bytes())
    tensors = {k: (v * 0.01 if k.startswith("model.layers.0.") else v) for k, v in _tensors(src).items()}
    save_file(tensors, low / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SpecError) as err:
        prune_model(low, PruneSpec(metric="magnitude_l1", num_layers=1, replace="linear"), tmp_path / "out")
    assert err.value.param == "prune.replace" and "layer 0" in err.value.message


def test_spec_shapes() -> None:
    assert PruneSpec().replacement is None and PruneSpec(replace="none").replacement is None
    short = PruneSpec(replace="linear").replacement
    assert short == ReplaceSpec(method="linear") and short.objective == "lstsq"
    full = PruneSpec(replace={"method": "linear", "objective": "cosine", "steps": 50}).replacement
    assert full is not None and full.objective == "cosine" and full.steps == 50
    assert PruneSpec(replace="linear").model_dump()["replace"]["method"] == "linear"
    with pytest.raises(SpecError) as err:
        PruneSpec(replace={"objective": "cosine"})
    assert err.value.param == "prune.replace.method"
    for bad in ("quadratic", {"method": "linear", "objective": "l1"}, {"method": "linear", "steps": 0}):
        with pytest.raises(ValueError):
            PruneSpec(replace=bad)
    # Its queue (gpu: fitting runs the model) is the service's decision: tests/api/test_routing.py.


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["lstsq", "cosine"])
def test_bundled_job_with_linear_replacement_through_the_pipeline(objective: str, tmp_path: Path) -> None:
    from layerprune.core.pipeline import run_pipeline
    from layerprune.core.sources import resolve_model

    # The cosine objective starts from the least-squares map and takes a few optimiser steps.
    replace = {"method": "linear", "objective": objective, **({"steps": 30} if objective == "cosine" else {})}
    spec = JobSpec.model_validate({
        "prune": {"metric": "angular", "num_layers": 7, "replace": replace,
                  "calibration": {"num_samples": 4, "seq_len": 64, "batch_size": 2}},
        "evaluate": {"perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 64, "max_windows": 2},
                     "compare_base": False}})
    result = run_pipeline(spec, resolve_model(spec.model, None), tmp_path, Hooks())
    removed = result["removed_layers"]
    assert len(removed) == 7 and removed == list(range(removed[0], removed[0] + 7)) and removed[0] > 0
    rep = result["prune"]["replacement"]
    (run,) = rep["runs"]
    assert run["layers"] == removed and run["kept_layer"] == removed[0] - 1 and run["tokens"] == 4 * 64
    assert run["cosine"] > run["cosine_removed"] and run["residual"] < run["residual_removed"]
    assert result["metrics"]["after"]["perplexity"]["value"] > 0
    out = tmp_path / "output"
    record = json.loads((out / "layerprune.json").read_text())
    assert rep["objective"] == objective and rep["steps"] == (30 if objective == "cosine" else 0)
    assert record["prune"]["replacement"] == rep and record["spec"]["prune"]["replace"]["method"] == "linear"
    card = (out / "README.md").read_text()
    assert "linear map" in card and run["folded_into"] in card
