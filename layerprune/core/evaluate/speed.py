"""Measured throughput: prefill and greedy-decode tokens/s, before and after, on the worker's device.

One *pass* at batch size B: a prefill forward over a ``B × prompt_tokens`` batch of token ids
(``prefill_tokens_per_s = B · prompt_tokens / its time``), then ``new_tokens`` single-token greedy
steps with the KV cache, never stopping early (``decode_tokens_per_s = B · new_tokens / their
time``). The ids are drawn once from a seeded generator, so every model sees the same ones (pruning
keeps the vocabulary). Each figure is tokens over the median time of ``repeats`` timed passes after ``warmup``
untimed ones; CUDA is synchronised around each timed region, timing is ``time.perf_counter``.

Before and after are measured in the same process with the same settings. On CPU the models are
interleaved round by round (before, after, then after, before, …): a shared, loaded machine drifts
(other processes, frequency scaling, cache state) over the seconds a measurement takes, and measuring
one model entirely before the other would book that drift as a speed-up or slow-down; alternating
the order also cancels a "second in the round" advantage. On CUDA, where timing is stable once
warmed up, the models are measured one after the other, so only one is resident at a time.

Result of one model (:func:`measure_speed`): ``{"device", "dtype", "threads", "settings": {...},
"batches": {"<B>": {"prefill_tokens_per_s", "decode_tokens_per_s", "prefill_s", "decode_s",
"runs": {"prefill_tokens_per_s": [...], "decode_tokens_per_s": [...]}}}}``; :func:`compare_speed`
adds ``ratio`` (after / before: the speed-up) per figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerprune.core.device import pick_device
from layerprune.core.errors import SpecError
from layerprune.core.evaluate.loglik import _cache_kwarg, model_max_length
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.loading import load_model
from layerprune.core.spec import SpeedSpec

FIGURES = ("prefill_tokens_per_s", "decode_tokens_per_s")
_SEED = 1234


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompt_ids(model: Any, batch: int, length: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_SEED + batch)
    vocab = int(model.get_input_embeddings().num_embeddings)
    return torch.randint(0, vocab, (batch, length), generator=gen)


@torch.inference_mode()
def _one_pass(model: Any, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds of one prefill and of ``new_tokens`` greedy decode steps after it."""
    device = ids.device
    kwarg = _cache_kwarg(model)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
    _sync(device)
    prefill = time.perf_counter() - t0
    cache = getattr(out, "cache", None) or out.past_key_values
    del out
    t1 = time.perf_counter()
    for _ in range(new_tokens):  # a fixed count: no end-of-sequence stop, every row decodes every step
        out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kwarg: cache})
        cache = getattr(out, "cache", None) or out.past_key_values
        nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
    _sync(device)
    return prefill, time.perf_counter() - t1


def _check_fits(model: Any, spec: SpeedSpec) -> None:
    limit = model_max_length(model.config)
    if spec.prompt_tokens + spec.new_tokens > limit:
        raise SpecError(f"prompt_tokens + new_tokens ({spec.prompt_tokens} + {spec.new_tokens}) exceeds the model's "
                        f"{limit} positions", param="evaluate.speed.prompt_tokens")


def measure_speed(models: Sequence[Any], spec: SpeedSpec, hooks: Hooks = NO_HOOKS) -> list[dict[str, Any]]:
    """Each model's figures (see the module doc), measured interleaved round by round."""
    if not models:
        return []
    for model in models:
        _check_fits(model, spec)
        model.eval()
    ids = {b: _prompt_ids(models[0], b, spec.prompt_tokens) for b in spec.batch_sizes}
    runs: list[dict[int, tuple[list[float], list[float]]]] = [{b: ([], []) for b in spec.batch_sizes} for _ in models]
    rounds = spec.warmup + spec.repeats
    for r in range(rounds):
        # Interleaved at the finest grain, alternating who goes first: the models' passes at one batch
        # size run back to back, so drift on a shared machine hits both alike.
        order = list(range(len(models)))
        if r % 2 == 1:
            order.reverse()
        for b in spec.batch_sizes:
            for i in order:
                device = next(models[i].parameters()).device
                prefill_s, decode_s = _one_pass(models[i], ids[b].to(device), spec.new_tokens)
                if r >= spec.warmup:
                    runs[i][b][0].append(prefill_s)
                    runs[i][b][1].append(decode_s)
        hooks.check()
        hooks.progress(r + 1, rounds, "speed")
    return [_summary(model, runs[i], spec) for i, model in enumerate(models)]


def _summary(model: Any, runs: dict[int, tuple[list[float], list[float]]], spec: SpeedSpec) -> dict[str, Any]:
    param = next(model.parameters())
    batches: dict[str, Any] = {}
    for b, (prefill, decode) in runs.items():
        prefill_rates = [b * spec.prompt_tokens / s for s in prefill]
        decode_rates = [b * spec.new_tokens / s for s in decode]
        prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
        # Tokens over the median time, so a figure and its seconds always agree.
        batches[str(b)] = {
            "prefill_tokens_per_s": b * spec.prompt_tokens / prefill_s,
            "decode_tokens_per_s": b * spec.new_tokens / decode_s,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "runs": {"prefill_tokens_per_s": prefill_rates, "decode_tokens_per_s": decode_rates},
        }
    return {
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "settings": {**spec.model_dump(), "interleaved": param.device.type != "cuda"},
        "batches": batches,
    }


def measure_model_dirs(model_dirs: Sequence[Path], spec: SpeedSpec, hooks: Hooks = NO_HOOKS,
                       device: Any = None) -> list[dict[str, Any]]:
    """:func:`measure_speed` of the models in ``model_dirs`` (base first), loaded as evaluation loads them."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type != "cuda":
        models = [load_model(Path(d), device=device)[0] for d in model_dirs]
        return measure_speed(models, spec, hooks)
    out: list[dict[str, Any]] = []
    for d in model_dirs:  # one at a time on the accelerator (module doc)
        model = load_model(Path(d), device=device)[0]
        out += measure_speed([model], spec, hooks)
        del model
        torch.cuda.empty_cache()
    return out


def generation_tokens_per_s(model: Any, new_tokens: int = 128) -> float:
    """Greedy decode speed at batch 1 (tokens/s, KV cache, one warm-up): the legacy single figure."""
    spec = SpeedSpec(prompt_tokens=8, new_tokens=new_tokens, batch_sizes=[1], repeats=1, warmup=1)
    return float(measure_speed([model], spec)[0]["batches"]["1"]["decode_tokens_per_s"])


def compare_speed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"batches": {"<B>": {figure: {before, after, delta, ratio}}}}``; ratio = after / before (speed-up)."""
    if not before or not after:
        return None
    out: dict[str, Any] = {"batches": {}}
    for b, fb in (before.get("batches") or {}).items():
        fa = (after.get("batches") or {}).get(b)
        if not fa:
            continue
        row: dict[str, Any] = {}
        for fig in FIGURES:
            x, y = fb.get(fig), fa.get(fig)
            row[fig] = {"before": x, "after": y, "delta": y - x if x is not None and y is not None else None,
                        "ratio": y / x if x and y is not None else None}
        out["batches"][b] = row
    return out
