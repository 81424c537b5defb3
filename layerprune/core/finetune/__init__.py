"""Healing: fine-tune a pruned model (docs/methods.md §3).

``finetune_model`` loads a Hugging Face directory, trains it per a :class:`FinetuneSpec`
(``partial`` / ``lora`` / ``qlora`` / ``full``), checkpoints and resumes through ``work_dir``,
and writes a plain Hugging Face directory (for LoRA/QLoRA the merged model, plus the adapter in
``adapter/``). ``check_finetune_spec`` and ``load_examples`` let the API refuse bad jobs early.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerprune.core.errors import DatasetError, DeviceUnavailableError, SpecError
from layerprune.core.finetune.data import split_validation, tokenize_examples, validate_rows
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.spec import FinetuneSpec
from layerprune.core.textdata import load_rows

__all__ = ["FinetuneResult", "finetune_model", "check_finetune_spec", "load_examples"]


@dataclass
class FinetuneResult:
    method: str
    trainable_params: int
    total_params: int
    steps: int
    epochs: float
    final_loss: float
    val_loss: float | None
    tokens_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int | None = None
    num_layers: int = 0
    objective: str = "lm"  # "distill": final_loss is the weighted mix; val_loss is the LM loss either way

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_finetune_spec(spec: FinetuneSpec, num_layers: int, *, cuda_available: bool) -> None:
    """Checks that need the model or the worker: raise typed errors naming the field."""
    if spec.method == "none":
        return
    if spec.method == "partial" and spec.trainable_last_layers > num_layers:
        raise SpecError(
            f"trainable_last_layers {spec.trainable_last_layers} is more than the {num_layers} layers "
            "that remain after pruning", param="finetune.trainable_last_layers")
    if spec.method == "qlora":
        if not cuda_available:
            raise DeviceUnavailableError("method 'qlora' needs a CUDA GPU (4-bit bitsandbytes); none is available "
                                         "here: use 'lora' or 'partial'", param="finetune.method")
    if not spec.dataset.strip():
        raise SpecError("dataset must not be empty", param="finetune.dataset")


def load_examples(spec: FinetuneSpec) -> list[dict[str, Any]]:
    """The rows of ``spec.dataset``, validated for ``spec.format``."""
    rows = load_rows(spec.dataset, param="finetune.dataset")
    if not rows:
        raise DatasetError(f"data set '{spec.dataset}' is empty", param="finetune.dataset")
    return validate_rows(rows, spec.format)


def _source_dtype(source_dir: Path):  # type: ignore[no-untyped-def]
    import torch  # noqa: PLC0415 - keeps torch out of the API

    cfg = json.loads((source_dir / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name).removeprefix("torch."), torch.float32)


def _load_teacher(teacher_dir: Path, student_config: Any, spec: FinetuneSpec, hooks: Hooks, *, device: Any,
                  dtype: Any, quantized: bool, student_dir: Path) -> Any:
    """The frozen teacher of a distillation run, on the student's device (4-bit under qlora).

    Called by the training loop through a closure, so that the distiller holds the only
    reference and can free the teacher once its targets are all cached."""
    import torch  # noqa: PLC0415 - keeps torch out of the API
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - keeps torch out of the API

    from layerprune.core.architecture import find_decoder_parts, text_config  # noqa: PLC0415 - keeps torch out of the API
    from layerprune.core.finetune import lora  # noqa: PLC0415 - keeps torch out of the API

    if quantized:
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, quantization_config=lora.quantization_config(),
                                                       dtype=torch.bfloat16, device_map={"": device},
                                                       trust_remote_code=False)
    else:
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=dtype, trust_remote_code=False)
        teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    t_cfg, s_cfg = text_config(teacher.config), text_config(student_config)
    if int(t_cfg.vocab_size) != int(s_cfg.vocab_size):
        raise SpecError(f"the teacher's vocabulary ({t_cfg.vocab_size}) differs from the student's "
                        f"({s_cfg.vocab_size})", param="finetune.objective")
    if spec.distill_hidden_weight > 0 and int(t_cfg.hidden_size) != int(s_cfg.hidden_size):
        raise SpecError(f"the teacher's hidden size ({t_cfg.hidden_size}) differs from the student's "
                        f"({s_cfg.hidden_size})", param="finetune.distill_hidden_weight")
    if spec.distill_top_k is not None and spec.distill_top_k > int(t_cfg.vocab_size):
        raise SpecError(f"distill_top_k {spec.distill_top_k} is more than the vocabulary's {t_cfg.vocab_size} "
                        "tokens (None distils over all of them)", param="finetune.distill_top_k")
    layers = len(find_decoder_parts(teacher).layers)
    same = teacher_dir.resolve() == Path(student_dir).resolve()
    hooks.info(f"distilling from the teacher ({layers} layers{', the model being healed as it starts' if same else ''})",
               teacher_layers=layers, top_k=spec.distill_top_k, temperature=spec.distill_temperature,
               alpha=spec.distill_alpha, hidden_weight=spec.distill_hidden_weight)
    return teacher


def _fingerprint(spec: FinetuneSpec, num_layers: int, num_train: int, trainable: list[str]) -> str:
    # Everything that changes the training trajectory; checkpoint_every does not.
    data = {"spec": spec.model_dump(mode="json", exclude={"checkpoint_every"}), "layers": num_layers,
            "train": num_train, "trainable": trainable}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def finetune_model(source_dir: Path, spec: FinetuneSpec, out_dir: Path, work_dir: Path, hooks: Hooks = NO_HOOKS,
                   *, device: Any = None, dtype: Any = None, teacher_dir: Path | None = None) -> FinetuneResult:
    """Heal the model at ``source_dir`` per ``spec`` and write it to ``out_dir``; see the module doc.

    ``teacher_dir``: the teacher of ``objective: "distill"`` — the job's input model, before
    pruning (core.pipeline passes it); by default the model being healed itself, as it starts.

    ``dtype`` (default: core.device's choice, CUDA bf16 / CPU fp32) is the compute dtype. In bf16
    the model is loaded in bf16, the trainable parameters are kept in fp32 (master weights: an
    lr-1e-5 update is below bf16's resolution for most weights) and forward passes run under
    autocast. fp16 is not used for training (it would need loss scaling): it falls back to fp32.
    The output is saved in the source's dtype.
    """
    import torch  # noqa: PLC0415 - keeps torch out of the API
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - keeps torch out of the API

    from layerprune.core.architecture import count_params, find_decoder_parts, num_layers_of  # noqa: PLC0415 - keeps torch out of the API
    from layerprune.core.device import pick_device, pick_dtype  # noqa: PLC0415 - keeps torch out of the API
    from layerprune.core.finetune import lora, methods  # noqa: PLC0415 - keeps torch out of the API
    from layerprune.core.finetune.loop import Teacher, TrainConfig, train  # noqa: PLC0415 - keeps torch out of the API

    source_dir, out_dir, work_dir = Path(source_dir), Path(out_dir), Path(work_dir)
    if spec.method == "none":
        raise SpecError("method 'none' trains nothing", param="finetune.method")
    device = torch.device(device) if device is not None else pick_device()
    if spec.method == "qlora":
        check_finetune_spec(spec, 0, cuda_available=device.type == "cuda")
        if importlib.util.find_spec("bitsandbytes") is None:  # checked here, on the worker, not by the API
            raise DeviceUnavailableError("method 'qlora' needs the bitsandbytes package on the worker "
                                         "(pip install layerprune[gpu])", param="finetune.method")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # Refuse a bad layer count before reading data or weights.
    check_finetune_spec(spec, num_layers_of(AutoConfig.from_pretrained(source_dir)), cuda_available=device.type == "cuda")

    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = load_examples(spec)
    examples = tokenize_examples(rows, spec.format, tokenizer, spec.max_seq_len, spec.packing)
    train_ex, val_ex = split_validation(examples, spec.validation_fraction, spec.seed)
    timings["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    save_dtype = _source_dtype(source_dir)
    quantized = spec.method == "qlora"
    compute = dtype if dtype is not None else (torch.bfloat16 if quantized else pick_dtype(device))
    teacher_src = Path(teacher_dir) if teacher_dir is not None else source_dir
    if spec.objective == "distill":
        from layerprune.core.finetune.distill import check_teacher_fits, weights_bytes_as  # noqa: PLC0415 - keeps torch out of the API

        as_dtype = torch.float32 if compute == torch.float16 else compute
        check_teacher_fits(weights_bytes_as(teacher_src, as_dtype, quantized),
                           weights_bytes_as(source_dir, as_dtype, quantized), device,
                           "nf4" if quantized else str(as_dtype).removeprefix("torch."))
    if quantized:
        model = AutoModelForCausalLM.from_pretrained(source_dir, quantization_config=lora.quantization_config(),
                                                     dtype=torch.bfloat16, device_map={"": device},
                                                     trust_remote_code=False)
    else:
        compute = torch.float32 if compute == torch.float16 else compute
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=compute, trust_remote_code=False)
        model.to(device)
    num_layers = len(find_decoder_parts(model).layers)
    check_finetune_spec(spec, num_layers, cuda_available=device.type == "cuda")
    total_params = count_params(model)
    load_teacher = None
    if spec.objective == "distill":
        load_teacher = functools.partial(_load_teacher, teacher_src, model.config, spec, hooks, device=device,
                                         dtype=compute, quantized=quantized, student_dir=source_dir)
    timings["load"] = time.perf_counter() - t0

    # Seed before wrapping: LoRA initialises its A matrices from the global RNG, and a run must
    # be reproducible (a resumed run restores the RNG states of its checkpoint on top of this).
    torch.manual_seed(spec.seed)
    plan = None
    last_layer = find_decoder_parts(model).layers[-1]  # before a LoRA wrapper hides it
    if spec.method == "partial":
        plan = methods.prepare_partial(model, spec)
        if plan.untied:
            hooks.info("untied lm_head from the input embeddings so training it leaves them unchanged")
            total_params = count_params(model)
    elif spec.method == "full":
        methods.prepare_full(model)
    elif spec.method == "lora":
        model = lora.wrap_lora(model, spec)
    else:
        model = lora.prepare_qlora(model, spec)
    named = methods.trainable_named_parameters(model)
    autocast_dtype = None
    if compute in (torch.bfloat16, torch.float16):
        autocast_dtype = compute
        for _, p in named:
            p.data = p.data.float()
    trainable = sum(p.numel() for _, p in named)
    hooks.info(f"{spec.method}: {trainable:,} of {total_params:,} parameters trainable",
               trainable_params=trainable, total_params=total_params)

    config = TrainConfig(spec, work_dir, device, pad_id,
                         _fingerprint(spec, num_layers, len(train_ex), [n for n, _ in named]),
                         paged_8bit=quantized, autocast_dtype=autocast_dtype)
    teacher = Teacher(load_teacher, last_layer) if load_teacher is not None else None
    outcome = train(model, plan, train_ex, val_ex, config, hooks, teacher)

    t0 = time.perf_counter()
    # Written beside out_dir and renamed into place: a run killed while saving leaves no half model.
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if spec.method in ("lora", "qlora"):
        lora.export_merged(model, tmp, source_dir=source_dir, dtype=save_dtype, quantized=quantized, device=device)
    else:
        model.to(save_dtype).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    timings["save"] = time.perf_counter() - t0
    timings.update(outcome.timings)
    return FinetuneResult(
        method=spec.method, trainable_params=trainable, total_params=total_params, steps=outcome.steps,
        epochs=outcome.epochs, final_loss=outcome.final_loss, val_loss=outcome.val_loss,
        tokens_per_s=outcome.tokens_per_s, history=outcome.history, timings=timings,
        resumed_from_step=outcome.resumed_from_step, num_layers=num_layers, objective=spec.objective,
    )
