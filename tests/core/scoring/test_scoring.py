"""Layer-scoring metrics on tiny models of several families and once on the real bundled model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.errors import Cancelled, DatasetError, SpecError
from layerprune.core.hooks import Hooks
from layerprune.core.scoring import (
    calibration_batches,
    choose_layers,
    magnitude_scores_from_files,
    needs_calibration,
    needs_model,
    score_layers,
)
from layerprune.core.scoring.capture import capture
from layerprune.core.scoring.perplexity import head_nll, naive_ppl_scores, next_token_nll
from layerprune.core.spec import METRICS, CalibrationSpec
from tests.tiny import LAYERS, VOCAB, tiny_model, tiny_tokenizer

FAMILIES = ["llama", "gemma2", "gpt2", "gpt_neox", "qwen3", "phi3", "olmo2"]
# The projections that write a block's contributions back into the residual stream.
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h")


def calib(n: int = 4, seq: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def make_identity(model: torch.nn.Module, index: int) -> None:
    """Zero the output projections of block ``index``: it then returns its input unchanged."""
    layer = find_decoder_parts(model).layers[index]
    zeroed = 0
    with torch.no_grad():
        for name, module in layer.named_modules():
            if name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS:
                for p in module.parameters(recurse=False):
                    p.zero_()
                zeroed += 1
    assert zeroed == 2, name


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_layer_has_zero_block_influence_and_is_chosen_first(family: str) -> None:
    model = tiny_model(family)
    make_identity(model, 3)
    ids = calib()
    bi = score_layers(model, "block_influence", calibration=ids)
    assert len(bi) == LAYERS
    assert abs(bi[3]) < 1e-5
    assert min(s for i, s in enumerate(bi) if i != 3) > 1e-3  # type: ignore[type-var]
    assert choose_layers("block_influence", bi, 1, LAYERS) == [3]
    ang = score_layers(model, "angular", calibration=ids, block_size=1)
    assert len(ang) == LAYERS
    assert ang[3] < 2e-3  # arccos near 1 loses precision in fp32
    assert choose_layers("angular", ang, 1, LAYERS, block_size=1) == [3]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize(
    ("metric", "semantics", "power"),
    [("magnitude_l1", "paper", 1), ("magnitude_l2", "paper", 1), ("magnitude_l2", "reference_code", 2)],
)
def test_scaling_a_layer_by_c_scales_its_magnitude_by_c_to_the_power(
    family: str, metric: str, semantics: str, power: int
) -> None:
    model = tiny_model(family)
    before = score_layers(model, metric, calibration=None, semantics=semantics)
    c = 3.0
    with torch.no_grad():
        for name, p in find_decoder_parts(model).layers[2].named_parameters():
            if not name.endswith("bias"):
                p.mul_(c)
    after = score_layers(model, metric, calibration=None, semantics=semantics)
    assert after[2] == pytest.approx(before[2] * c**power, rel=1e-5)
    for i in range(LAYERS):
        if i != 2:
            assert after[i] == before[i]


def test_magnitude_counts_weights_and_norms_but_not_biases() -> None:
    model = tiny_model("gpt2")
    layer = find_decoder_parts(model).layers[0]
    expected = sum(float(p.detach().abs().sum()) for n, p in layer.named_parameters() if not n.endswith("bias"))
    assert any(n.startswith("ln_") and n.endswith("weight") for n, _ in layer.named_parameters())
    assert score_layers(model, "magnitude_l1", calibration=None)[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_streamed_magnitude_equals_in_memory(family: str, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    path = tiny_dirs(family)
    model = AutoModelForCausalLM.from_pretrained(path)
    for metric, p in (("magnitude_l1", 1), ("magnitude_l2", 2)):
        for semantics in ("paper", "reference_code"):
            streamed = magnitude_scores_from_files(path, p, semantics)
            in_memory = score_layers(model, metric, calibration=None, semantics=semantics)
            assert streamed == pytest.approx(in_memory, rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_shared_prefix_ppl_equals_naive_and_runs_exactly_L_evaluations(family: str) -> None:
    model = tiny_model(family)
    ids = calib(n=4, seq=20)
    parts = find_decoder_parts(model)
    heads = [0]
    calls = [0]
    h1 = parts.lm_head.register_forward_hook(lambda *_: heads.__setitem__(0, heads[0] + 1))
    h2 = [layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for layer in parts.layers]
    try:
        shared = score_layers(model, "ppl", calibration=ids, batch_size=2)
    finally:
        h1.remove()
        for h in h2:
            h.remove()
    batches = 2
    # L evaluations per batch, each one lm_head; block calls: the shared prefix (layers 0..L−2, once)
    # plus layers i+1..L−1 for each i: L(L−1)/2.
    assert heads[0] == LAYERS * batches
    assert calls[0] == batches * (LAYERS - 1 + LAYERS * (LAYERS - 1) // 2)
    naive = naive_ppl_scores(model, ids, batch_size=2)
    assert shared == pytest.approx(naive, rel=1e-4)
    assert sorted(range(LAYERS), key=lambda i: shared[i]) == sorted(range(LAYERS), key=lambda i: naive[i])
    assert find_decoder_parts(model).layers is parts.layers  # the naive run restored the model


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_head_nll_equals_the_loss_of_the_models_own_logits(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Final norm, soft-capping (gemma2) and lm_head as the forward applies them, in any chunking."""
    model = tiny_model(family)
    ids = calib(n=3, seq=17)
    with torch.no_grad():
        cap = capture(model, ids)
        last = cap.calls[-1].run(cap.inputs[-1])
        expected = next_token_nll(model(input_ids=ids, use_cache=False).logits, ids)
        whole = head_nll(model, last, ids)
        monkeypatch.setattr("layerprune.core.scoring.perplexity._HEAD_CHUNK_ELEMENTS", 5 * VOCAB)  # 5 tokens a chunk
        chunked = head_nll(model, last, ids)
    assert whole[1] == chunked[1] == expected[1] == 3 * 16
    assert whole[0] == pytest.approx(expected[0], rel=1e-5)
    assert chunked[0] == pytest.approx(expected[0], rel=1e-5)


def test_ppl_of_removing_an_identity_layer_is_the_full_models_ppl() -> None:
    model = tiny_model("llama")
    make_identity(model, 5)
    ids = calib()
    ppl = score_layers(model, "ppl", calibration=ids)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    assert ppl[5] == pytest.approx(math.exp(float(loss)), rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_taylor_is_one_backward_per_batch_of_the_mean_loss_of_the_whole_set(family: str) -> None:
    model = tiny_model(family)
    ids = calib(n=4, seq=16)
    norm = find_decoder_parts(model).final_norm
    assert norm is not None
    backwards = [0]
    h = norm.register_full_backward_hook(lambda *_: backwards.__setitem__(0, backwards[0] + 1))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        scores = score_layers(model, "taylor", calibration=ids, batch_size=2)
    finally:
        h.remove()
    assert backwards[0] == 2
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

    # The definition, computed plainly: ONE backward of the mean loss of all four windows, then
    # Σ|w·∂L/∂w| over weights (no biases). Not the sum of per-batch |w·g|, which depends on batching.
    model.zero_grad()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    expected = [0.0] * LAYERS
    per_batch_abs = [0.0] * LAYERS
    for i, layer in enumerate(find_decoder_parts(model).layers):
        for name, p in layer.named_parameters():
            if not name.endswith("bias"):
                expected[i] += float((p.detach().double() * p.grad.double()).abs().sum())
    for half in (ids[:2], ids[2:]):
        model.zero_grad()
        model(input_ids=half, labels=half, use_cache=False).loss.backward()
        for i, layer in enumerate(find_decoder_parts(model).layers):
            for name, p in layer.named_parameters():
                if not name.endswith("bias"):
                    per_batch_abs[i] += float((p.detach() * p.grad).abs().sum()) / 2
    model.zero_grad()
    assert scores == pytest.approx(expected, rel=1e-4)
    # The batch-dependent sum is measurably different (what the score used to be).
    assert max(abs(a - b) / b for a, b in zip(per_batch_abs, expected, strict=True)) > 1e-3


@pytest.mark.parametrize("batch_size", [3, 4, None])
def test_taylor_does_not_depend_on_the_batch_size(batch_size: int | None) -> None:
    """batch_size 3 over 4 windows: a full batch and a one-window batch, weighted by their tokens."""
    model = tiny_model("llama")
    ids = calib(n=4, seq=16)
    one = score_layers(model, "taylor", calibration=ids, batch_size=1)
    other = score_layers(model, "taylor", calibration=ids, batch_size=batch_size)
    assert other == pytest.approx(one, rel=1e-5)


def test_block_influence_paper_uses_raw_outputs_and_scores_the_last_layer() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        # A non-uniform norm weight: with all-ones RMSNorm only rescales tokens and cosines would agree.
        find_decoder_parts(model).final_norm.weight.uniform_(0.2, 2.0)  # type: ignore[union-attr]
    ids = calib(n=2, seq=12)
    bi = score_layers(model, "block_influence", calibration=ids)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for i in range(LAYERS - 1):
        cos = torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1)
        assert bi[i] == pytest.approx(float((1 - cos).mean()), abs=1e-5)
    # hidden_states[-1] is after the final norm on Llama: the last score must not be taken from it.
    normed = float((1 - torch.nn.functional.cosine_similarity(hs[-2], hs[-1], dim=-1)).mean())
    assert bi[-1] is not None and abs(bi[-1] - normed) > 1e-3


def test_block_influence_reference_code_is_one_flattened_cosine_without_the_last_layer() -> None:
    model = tiny_model("llama")
    ids = calib(n=2, seq=12)
    bi = score_layers(model, "block_influence", calibration=ids, semantics="reference_code")
    assert bi[-1] is None
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for i in range(LAYERS - 1):
        cos = torch.nn.functional.cosine_similarity(hs[i].reshape(1, -1), hs[i + 1].reshape(1, -1))
        assert bi[i] == pytest.approx(1 - float(cos), abs=1e-5)
    assert LAYERS - 1 not in choose_layers("block_influence", bi, LAYERS - 1, LAYERS)
    # One cosine over all windows, not a mean of per-batch cosines: batching does not change it.
    batched = score_layers(model, "block_influence", calibration=ids, semantics="reference_code", batch_size=1)
    assert batched[-1] is None and batched[:-1] == pytest.approx(bi[:-1], rel=1e-6)


def test_angular_scores_every_block_start_by_the_last_token() -> None:
    model = tiny_model("llama")
    ids = calib(n=3, seq=10)
    n = 3
    ang = score_layers(model, "angular", calibration=ids, block_size=n)
    assert len(ang) == LAYERS - n + 1
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    cos = torch.nn.functional.cosine_similarity(hs[0][:, -1], hs[n][:, -1], dim=-1)
    assert ang[0] == pytest.approx(float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()), abs=1e-5)
    with pytest.raises(SpecError) as exc:
        score_layers(model, "angular", calibration=ids, block_size=LAYERS)
    assert exc.value.param == "prune.num_layers"


@pytest.mark.parametrize("metric", ["reverse_order", "random", "manual"])
def test_positional_metrics_have_no_scores(metric: str) -> None:
    assert score_layers(tiny_model("llama"), metric, calibration=None) == [None] * LAYERS


@pytest.mark.parametrize("metric", ["taylor", "ppl", "block_influence", "angular"])
def test_scoring_reports_progress_and_stops_when_cancelled(metric: str) -> None:
    model = tiny_model("llama")
    ids = calib(n=4, seq=12)
    seen: list[tuple[float, float, str]] = []
    score_layers(model, metric, calibration=ids, batch_size=2,
                 hooks=Hooks(progress=lambda d, t, m: seen.append((d, t, m))))
    assert seen and seen[-1][0] == seen[-1][1]
    asked = [0]

    def stop_after_first_unit() -> bool:
        asked[0] += 1
        return asked[0] > 2

    with pytest.raises(Cancelled):
        score_layers(model, metric, calibration=ids, batch_size=1, hooks=Hooks(should_stop=stop_after_first_unit))
    assert all(p.grad is None for p in model.parameters())


def test_unknown_metric_or_semantics_is_a_spec_error() -> None:
    model = tiny_model("llama")
    for call in (lambda: score_layers(model, "cosine", calibration=None), lambda: needs_calibration("cosine"),
                 lambda: needs_model("cosine")):
        with pytest.raises(SpecError) as exc:
            call()
        assert exc.value.param == "prune.metric"
    with pytest.raises(SpecError) as exc:
        score_layers(model, "magnitude_l2", calibration=None, semantics="exact")
    assert exc.value.param == "prune.semantics"
    with pytest.raises(SpecError) as exc:
        score_layers(model, "taylor", calibration=None)
    assert exc.value.param == "prune.calibration"


def test_metric_table() -> None:
    assert {m for m in METRICS if needs_calibration(m)} == {"taylor", "ppl", "block_influence", "angular"}
    assert {m for m in METRICS if not needs_model(m)} == {
        "reverse_order", "random", "manual", "magnitude_l1", "magnitude_l2"}


def test_calibration_windows_are_seeded_random_windows() -> None:
    tok = tiny_tokenizer()
    spec = CalibrationSpec(num_samples=5, seq_len=32, seed=3)
    a = calibration_batches(tok, spec)
    assert a.shape == (5, 32) and a.dtype == torch.long
    assert torch.equal(a, calibration_batches(tok, spec))
    assert not torch.equal(a, calibration_batches(tok, CalibrationSpec(num_samples=5, seq_len=32, seed=4)))


def test_calibration_text_shorter_than_a_window_is_a_dataset_error(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    with pytest.raises(DatasetError) as exc:
        calibration_batches(tiny_tokenizer(), CalibrationSpec(dataset=str(short), seq_len=128))
    assert exc.value.param == "prune.calibration.dataset"
    with pytest.raises(DatasetError) as exc:
        calibration_batches(tiny_tokenizer(), CalibrationSpec(dataset=str(tmp_path / "missing.txt")))
    assert exc.value.param == "prune.calibration.dataset"


@pytest.mark.parametrize(("field", "value"), [("seq_len", 1), ("num_samples", 0)])
def test_calibration_sizes_are_validated_by_the_spec(field: str, value: int) -> None:
    with pytest.raises(ValidationError) as exc:
        CalibrationSpec(**{field: value})
    assert exc.value.errors()[0]["loc"] == (field,)


@pytest.fixture(scope="module")
def bundled_model(bundled_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(bundled_dir)


@pytest.mark.slow
def test_bundled_model_block_influence(bundled_model) -> None:  # type: ignore[no-untyped-def]
    model, tok = bundled_model
    ids = calibration_batches(tok, CalibrationSpec(num_samples=4, seq_len=64))
    bi = score_layers(model, "block_influence", calibration=ids)
    assert len(bi) == 30
    assert all(s is not None and 0.0 < s < 1.0 for s in bi)
    # The first block rewrites its input most (ShortGPT's observation on Llama models).
    assert bi[0] == max(bi)  # type: ignore[type-var]
    removed = choose_layers("block_influence", bi, 7, 30)
    assert 0 not in removed and len(removed) == 7


@pytest.mark.slow
def test_bundled_model_streamed_magnitude_equals_in_memory(bundled_model, bundled_dir: Path) -> None:  # type: ignore[no-untyped-def]
    model, _ = bundled_model
    streamed = magnitude_scores_from_files(bundled_dir, 2)
    assert streamed == pytest.approx(score_layers(model, "magnitude_l2", calibration=None), rel=1e-6)


def test_scores_ignore_dropout_and_restore_the_training_mode() -> None:
    model = tiny_model("gpt2")  # GPT-2 has dropout 0.1 on residuals and attention
    model.train()
    ids = calib(n=2, seq=12)
    first = score_layers(model, "block_influence", calibration=ids)
    assert model.training
    assert score_layers(model, "block_influence", calibration=ids) == first
    assert score_layers(model, "ppl", calibration=ids) == score_layers(model, "ppl", calibration=ids)
    assert model.training
