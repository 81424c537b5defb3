"""Distillation healing (objective "distill") on tiny models: the loss terms against direct
computations, the teacher-target cache, the trainable set, resume, and what is refused.

Tolerances: the KL against torch's own ``kl_div`` within 1e-5 relative (float32); cached and
uncached runs within 1e-6 relative on the first step and 1e-5 after (the targets are encoded to
float16 on both paths, so only the trunk cache's float reordering remains); alpha = 0 equals the
LM objective bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.errors import SpecError
from layerprune.core.finetune import finetune_model
from layerprune.core.finetune.checkpoint import latest_checkpoint
from layerprune.core.finetune.data import collate
from layerprune.core.finetune.distill import (
    Distiller,
    capture_output,
    distill_mask,
    encode_logits,
    kl_sum,
)
from layerprune.core.hooks import Hooks
from layerprune.core.removal import remove_layers
from layerprune.core.spec import FinetuneSpec, JobSpec
from tests.tiny import tiny_model, tiny_tokenizer

REL = 1e-5


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    from layerprune.core.bundled import bundled_text

    path = tmp_path_factory.mktemp("distilldata") / "train.txt"
    path.write_text("\n\n".join(t[:300] for t in bundled_text("wikipedia-train")[60:84]))
    return str(path)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    """The tiny Llama (the teacher, tiny_dirs('llama')) with its last 3 of 8 layers removed."""
    model = tiny_model("llama")
    remove_layers(model, [5, 6, 7])
    out = tmp_path_factory.mktemp("student") / "llama-5"
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def spec_for(data: str, **kw) -> FinetuneSpec:
    # 24 texts, micro-batch 4 → 6 micro-batches, batch 8 → 3 steps an epoch.
    base = dict(dataset=data, format="text", batch_size=8, micro_batch_size=4, epochs=2, warmup_steps=1,
                learning_rate=3e-3, max_seq_len=48, trainable_last_layers=2)
    return FinetuneSpec(**{**base, **kw})


DISTILL = dict(objective="distill", distill_top_k=16, distill_alpha=0.7, distill_temperature=2.0,
               distill_hidden_weight=0.5)


def _logits(seed: int, shape=(2, 6, 11)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def _padded_mask() -> torch.Tensor:
    attention = torch.ones(2, 6, dtype=torch.long)
    attention[1, 4:] = 0  # the second row has 4 real tokens
    return distill_mask(attention)


# --- the loss terms -----------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kl_over_the_whole_vocabulary_equals_torch_kl_div(tau):
    zs, zt, mask = _logits(0), _logits(1), _padded_mask()
    assert mask.sum() == 5 + 3
    ours = kl_sum(zs, zt, None, tau, mask)
    per_pos = F.kl_div(F.log_softmax(zs[:, :-1] / tau, -1), F.log_softmax(zt[:, :-1] / tau, -1),
                       log_target=True, reduction="none").sum(-1)
    assert float(ours) == pytest.approx(float((per_pos * mask).sum()), rel=REL)
    # Stored targets (max-shifted float16) change it by far less than a percent.
    values, indices = encode_logits(zt, None)
    assert indices is None and values.dtype == torch.float16 and float(values.max()) == 0.0
    assert float(kl_sum(zs, values, None, tau, mask)) == pytest.approx(float(ours), rel=1e-3)


def test_top_k_renormalises_the_teacher_over_its_k_largest_logits():
    zs, zt, mask = _logits(2), _logits(3), _padded_mask()
    full = float(kl_sum(zs, zt, None, 1.0, mask))
    values, indices = encode_logits(zt, 11)  # k = V: a permutation of the whole vocabulary
    assert float(kl_sum(zs, values, indices, 1.0, mask)) == pytest.approx(full, rel=1e-3)
    values, indices = encode_logits(zt, 3)
    assert values.shape == (2, 6, 3) and indices.dtype == torch.int32
    # Direct: p = softmax of the top-3 teacher logits (0 elsewhere), student over the whole vocabulary.
    top, idx = zt.topk(3, dim=-1)
    p = F.softmax(top, -1)
    direct = (p * (p.log() - F.log_softmax(zs, -1).gather(-1, idx))).sum(-1)[:, :-1]
    assert float(kl_sum(zs, values, indices, 1.0, mask)) == pytest.approx(float((direct * mask).sum()), rel=1e-3)


def test_tau_divides_both_logits_and_tau_squared_keeps_the_gradient_scale():
    zs, zt, mask = _logits(4), _logits(5), _padded_mask()
    assert float(kl_sum(zs, zt, None, 3.0, mask)) == pytest.approx(float(kl_sum(zs / 3, zt / 3, None, 1.0, mask)),
                                                                 rel=REL)
    # Hinton et al. 2015: as tau grows the gradient of tau²·KL with respect to the student's
    # logits tends to (z_s − z_t)/V for zero-mean logits, whatever tau (the error falls as 1/tau);
    # without the tau² factor it would shrink as 1/tau².
    zs, zt = zs / 3 - (zs / 3).mean(-1, keepdim=True), zt / 3 - (zt / 3).mean(-1, keepdim=True)
    expected = (zs - zt)[:, :-1] / zs.shape[-1] * mask[..., None]
    for tau in (20.0, 40.0, 80.0):
        x = zs.clone().requires_grad_(True)
        (tau**2 * kl_sum(x, zt, None, tau, mask)).backward()
        assert float((x.grad[:, :-1] - expected).abs().max()) < 0.5 / tau, tau
    assert float(expected.abs().max()) > 0.2


def test_combine_weights_the_terms_per_token():
    spec = spec_for("x", **DISTILL)
    d = Distiller.__new__(Distiller)
    d.alpha, d.beta, d.tau = spec.distill_alpha, spec.distill_hidden_weight, spec.distill_temperature
    ce, kl, hid = torch.tensor(12.0), torch.tensor(3.0), torch.tensor(0.6)
    got = float(d.combine(ce, kl, hid, targets=6, positions=10))
    assert got == pytest.approx(0.3 * 12 / 6 + 0.7 * 4 * 3 / 10 + 0.5 * 0.6 / 10)
    d.alpha, d.beta = 0.0, 0.0
    assert float(d.combine(ce, None, None, targets=6, positions=10)) == 12.0 / 6  # exactly the LM loss


@pytest.mark.parametrize("removed", [[5, 6, 7], [1, 2, 5]])
def test_hidden_term_compares_the_last_layers_outputs(removed):
    # "The cut": whatever runs were removed, the student's last layer (here original 4 or 7) is
    # matched with the teacher's last layer (original 7). With unit final-norm weights the models'
    # own final hidden states (post-norm) have the same cosines, which gives a direct reference.
    teacher, student = tiny_model("llama"), tiny_model("llama")
    remove_layers(student, removed)
    for m in (teacher, student):
        find_decoder_parts(m).final_norm.weight.data.fill_(1.0)
    tok = tiny_tokenizer()
    examples = [{"input_ids": tok("The river flows into the sea near the town.")["input_ids"][:12]},
                {"input_ids": tok("A short one.")["input_ids"]}]
    for e in examples:
        e["labels"] = list(e["input_ids"])
    batch = collate(examples, pad_id=2)
    spec = FinetuneSpec(objective="distill", distill_alpha=0.0, distill_hidden_weight=1.0, format="text",
                        dataset="x")
    d = Distiller(teacher, spec, find_decoder_parts(student).layers[-1], torch.device("cpu"), Hooks())
    with torch.no_grad(), capture_output(d.student_last_layer) as box:
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kl, hid = d.terms(0, batch, logits, box["hidden"])
        assert kl is None  # alpha = 0: the KL is not computed
        s_out = student(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
        t_out = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    mask = distill_mask(batch["attention_mask"])
    cos = F.cosine_similarity(s_out.hidden_states[-1][:, :-1], t_out.hidden_states[-1][:, :-1], dim=-1)
    assert float(hid) == pytest.approx(float(((1 - cos) * mask).sum()), rel=1e-4)
    assert float(hid) > 0.01 * float(mask.sum())
    # A student that is the teacher has nothing to learn: both terms are zero.
    same = Distiller(teacher, spec.model_copy(update={"distill_alpha": 1.0}), find_decoder_parts(teacher).layers[-1],
                     torch.device("cpu"), Hooks())
    with torch.no_grad(), capture_output(same.student_last_layer) as box:
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kl, hid = same.terms(0, batch, logits, box["hidden"])
    assert float(hid) == pytest.approx(0.0, abs=1e-5) and float(kl) == pytest.approx(0.0, abs=1e-3)


# --- the teacher-target cache -------------------------------------------------------------------

def test_teacher_cache_hit_equals_miss_and_the_teacher_is_released():
    teacher = tiny_model("llama")
    student = tiny_model("llama", seed=1)
    tok = tiny_tokenizer()
    ids = tok("Paris is the capital and largest city of France.")["input_ids"]
    batch = collate([{"input_ids": ids, "labels": ids}], pad_id=2)
    spec = FinetuneSpec(dataset="x", format="text", **DISTILL)
    d = Distiller(teacher, spec, find_decoder_parts(student).layers[-1], torch.device("cpu"), Hooks(),
                  cache_shapes={0: (1, len(ids))}, memory_limit=10**9)
    assert d.cached and set(d.caches) == {"teacher_values", "teacher_indices", "teacher_hidden"}
    losses = []
    for _ in range(2):  # a miss (runs the teacher, stores) then a hit (reads the store)
        with torch.no_grad(), capture_output(d.student_last_layer) as box:
            logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            kl, hid = d.terms(0, batch, logits, box["hidden"])
        losses.append(float(d.combine(torch.tensor(0.0), kl, hid, targets=1, positions=len(ids) - 1)))
        assert d.teacher is None  # one micro-batch: its targets are all there, the teacher is gone
    assert d.hits == 1 and losses[0] == losses[1]
    assert d.caches["teacher_values"].get(0).dtype == torch.float16
    assert d.caches["teacher_indices"].get(0).dtype == torch.int32
    d.close()


def test_whole_vocabulary_targets_beyond_the_memory_limit_are_not_cached():
    seen: list[str] = []
    spec = FinetuneSpec(dataset="x", format="text", objective="distill")
    d = Distiller(tiny_model("llama"), spec, find_decoder_parts(tiny_model("llama")).layers[-1], torch.device("cpu"),
                  Hooks(log=lambda level, msg, data: seen.append(msg)), cache_shapes={0: (4, 48)}, memory_limit=1000)
    assert not d.cached and any("runs every step" in m for m in seen)


@pytest.mark.parametrize("memory_limit", [None, "0"])
def test_cached_distillation_equals_uncached(tmp_path, tiny_dirs, student_dir, text_file, monkeypatch, memory_limit):
    if memory_limit is not None:  # everything memory-mapped in work_dir
        monkeypatch.setenv("LAYERPRUNE_TRUNK_CACHE_MEMORY_BYTES", memory_limit)
    teacher = tiny_dirs("llama")
    cached = finetune_model(student_dir, spec_for(text_file, **DISTILL), tmp_path / "oc", tmp_path / "wc",
                            teacher_dir=teacher)
    plain = finetune_model(student_dir, spec_for(text_file, cache_trunk=False, **DISTILL), tmp_path / "op",
                           tmp_path / "wp", teacher_dir=teacher)
    assert cached.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-6)
    for hc, hp in zip(cached.history, plain.history, strict=True):
        for key in ("loss", "ce", "kl", "hidden"):
            assert hc[key] == pytest.approx(hp[key], rel=REL), key
    assert [h["teacher_cached"] for h in cached.history] == [False] * 3 + [True] * 3
    assert not any(h["teacher_cached"] for h in plain.history)
    assert cached.timings["teacher_cache_bytes"] > 0 and "teacher_cache_bytes" not in plain.timings
    assert not list((tmp_path / "wc").glob("teacher_*.bin"))  # memory-mapped stores go when training ends
    wa, wb = load_file(str(tmp_path / "oc" / "model.safetensors")), load_file(str(tmp_path / "op" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k


# --- the objective against the LM loss, per method ----------------------------------------------

def test_alpha_zero_reproduces_the_lm_objective_exactly(tmp_path, tiny_dirs, student_dir, text_file):
    lm = finetune_model(student_dir, spec_for(text_file), tmp_path / "o-lm", tmp_path / "w-lm")
    d0 = finetune_model(student_dir, spec_for(text_file, objective="distill", distill_alpha=0.0), tmp_path / "o-d",
                        tmp_path / "w-d", teacher_dir=tiny_dirs("llama"))
    assert [h["loss"] for h in lm.history] == [h["loss"] for h in d0.history]
    assert [h["ce"] for h in d0.history] == [h["loss"] for h in lm.history]
    assert lm.val_loss == d0.val_loss
    wa, wb = load_file(str(tmp_path / "o-lm" / "model.safetensors")), load_file(str(tmp_path / "o-d" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("method", ["partial", "lora", "full"])
def test_the_trainable_set_does_not_depend_on_the_objective(tmp_path, tiny_dirs, student_dir, text_file, method):
    names = {}
    for objective in ("lm", "distill"):
        extra = DISTILL if objective == "distill" else {}
        spec = spec_for(text_file, method=method, max_steps=2, checkpoint_every=1, **extra)
        res = finetune_model(student_dir, spec, tmp_path / f"o-{objective}", tmp_path / f"w-{objective}",
                             teacher_dir=tiny_dirs("llama"))
        ckpt = latest_checkpoint(tmp_path / f"w-{objective}")
        names[objective] = (res.trainable_params, sorted(load_file(str(ckpt / "trainable.safetensors"))))
        if objective == "distill":
            assert res.history[-1]["kl"] > 0 and res.history[-1]["hidden"] > 0
    assert names["lm"] == names["distill"]
    assert not any("teacher" in n for n in names["distill"][1])


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from layerprune.core.finetune import finetune_model
    from layerprune.core.hooks import Hooks
    from layerprune.core.spec import FinetuneSpec

    src, teacher, spec_json, out, work, kill_at = sys.argv[1:]

    def progress(done, total, msg):
        if done == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    finetune_model(Path(src), FinetuneSpec.model_validate_json(spec_json), Path(out), Path(work),
                   Hooks(progress=progress), teacher_dir=Path(teacher))
""")


def test_killed_distillation_resumes_to_the_same_losses(tmp_path, tiny_dirs, student_dir, text_file):
    # 3 epochs of 3 steps, checkpoints every 2: killed after step 5, resumed from step 4 with an
    # empty teacher cache (refilled from the teacher) and the same losses.
    spec = spec_for(text_file, epochs=3, checkpoint_every=2, **DISTILL)
    teacher = tiny_dirs("llama")
    straight = finetune_model(student_dir, spec, tmp_path / "out-a", tmp_path / "work-a", teacher_dir=teacher)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(student_dir), str(teacher), spec.model_dump_json(),
                           str(tmp_path / "out-b"), str(tmp_path / "work-b"), "5"], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    resumed = finetune_model(student_dir, spec, tmp_path / "out-b", tmp_path / "work-b", teacher_dir=teacher)
    assert resumed.resumed_from_step == 4
    for ha, hb in zip(straight.history, resumed.history, strict=True):
        assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-6)
    assert not resumed.history[4]["teacher_cached"]  # step 5 recomputed its targets after the restart
    wa, wb = load_file(str(tmp_path / "out-a" / "model.safetensors")), load_file(str(tmp_path / "out-b" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6), k


# --- what is refused ----------------------------------------------------------------------------

@pytest.mark.parametrize("body,param", [
    ({"objective": "distill", "method": "none"}, "finetune.objective"),
    ({"distill_alpha": 0.5}, "finetune.distill_alpha"),
    ({"distill_top_k": 64}, "finetune.distill_top_k"),
    ({"objective": "distill", "distill_hidden_weight": 1.0, "trainable_last_layers": 0},
     "finetune.distill_hidden_weight"),
    ({"dataset": "bundled:wikipedia-train"}, "finetune.format"),
    ({"dataset": "bundled:instructions", "format": "text"}, "finetune.format"),
])
def test_specs_that_cannot_work_are_refused(body, param):
    with pytest.raises(SpecError) as e:
        FinetuneSpec(**body)
    assert e.value.param == param


def test_healing_on_the_perplexity_text_is_refused():
    body = {"finetune": {"dataset": "bundled:wikitext-like", "format": "text"},
            "evaluate": {"perplexity": {"dataset": "bundled:wikipedia-eval"}}}
    with pytest.raises(SpecError) as e:
        JobSpec.model_validate(body)
    assert e.value.param == "finetune.dataset"
    JobSpec.model_validate({**body, "finetune": {"dataset": "bundled:wikipedia-train", "format": "text",
                                                 "objective": "distill", "packing": True}})


def test_a_teacher_that_does_not_fit_beside_the_student_is_refused_with_sizes(tmp_path, tiny_dirs, student_dir,
                                                                              text_file, monkeypatch):
    from layerprune.core.finetune import distill

    # The device's memory is what cannot be made small here: say it holds 100 kB.
    monkeypatch.setattr(distill, "device_memory_bytes", lambda device: 100_000)
    with pytest.raises(SpecError) as e:
        finetune_model(student_dir, spec_for(text_file, **DISTILL), tmp_path / "o", tmp_path / "w",
                       teacher_dir=tiny_dirs("llama"))
    assert e.value.param == "finetune.objective"
    assert "teacher" in e.value.message and "GiB" in e.value.message and "float32" in e.value.message
    assert not (tmp_path / "o").exists()


def test_top_k_beyond_the_vocabulary_is_refused(tmp_path, tiny_dirs, student_dir, text_file):
    with pytest.raises(SpecError) as e:
        finetune_model(student_dir, spec_for(text_file, objective="distill", distill_top_k=600), tmp_path / "o",
                       tmp_path / "w", teacher_dir=tiny_dirs("llama"))
    assert e.value.param == "finetune.distill_top_k" and "512" in e.value.message


def test_specs_round_trip_through_json():
    # The worker reloads the stored spec: every field is listed there, defaults included.
    for spec in (FinetuneSpec(), FinetuneSpec(dataset="bundled:wikipedia-train", format="text", **DISTILL)):
        assert FinetuneSpec.model_validate_json(spec.model_dump_json()) == spec


def test_every_heal_of_an_iterative_job_distils_from_the_input_model(tmp_path, tiny_dirs):
    from layerprune.core.pipeline import run_pipeline
    from layerprune.core.sources import resolve_model

    root = tiny_dirs("llama").parent
    spec = JobSpec.model_validate({
        "model": "llama",
        "prune": {"metric": "reverse_order", "num_layers": 2, "iterative_step": 1, "heal_between_rounds": True},
        "finetune": {"objective": "distill", "distill_top_k": 8, "distill_hidden_weight": 0.5, "max_steps": 1,
                     "dataset": "bundled:wikipedia-train", "format": "text",
                     "batch_size": 1, "micro_batch_size": 1, "max_seq_len": 64, "warmup_steps": 0,
                     "trainable_last_layers": 1},
    })
    teachers: list[int] = []
    hooks = Hooks(log=lambda level, msg, data: teachers.append(data["teacher_layers"]) if "teacher_layers" in data
                  else None)
    result = run_pipeline(spec, resolve_model(spec.model, model_roots=[root]), tmp_path, hooks)
    assert result["num_layers_after"] == 6 and result["finetune"]["objective"] == "distill"
    assert teachers == [8, 8]  # the heal after round 0 (7 layers) and the final heal (6 layers)
