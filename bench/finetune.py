"""Benchmark of healing on the bundled model (issue 4, item 5). Prints ONE JSON line.

One process: SmolLM2-135M-Instruct pruned by 25% in reverse order (30 → 23 layers), healed for
2 epochs on a subset of the bundled instruction set with four methods: partial (k=3) with the
frozen-trunk cache, partial without it, LoRA and full. For each: tokens/s per epoch (tokens in
the batch, padding excluded, over the optimizer steps' wall time) and peak memory (CUDA: max
allocated; CPU: peak RSS, VmHWM reset before each run through /proc/self/clear_refs).

The bound the cache allows, from parameter counts (forward ≈ 2·P FLOPs a token, backward ≈ 2×
forward): an uncached partial epoch costs forward(trunk + trainable) + backward(trainable); a
cached epoch after the first costs forward + backward of the trainable part only, so

    bound = (P_trunk + 3·P_trainable) / (3·P_trainable)        (≈ 1.6 on the bundled model)

where P_trunk are the frozen layers and P_trainable the last k layers + final norm + lm_head.
Goals: cached epochs after the first within 10% of uncached tokens/s × bound; the whole cached run
≥ 1.4 × LoRA tokens/s.

Distillation (``objective: "distill"``, top-k 64, teacher = the unpruned model): an uncached
epoch also runs the teacher's forward; a cached one reads the teacher's stored targets, so

    distill bound = (P_teacher + P_trunk + 3·P_trainable) / (3·P_trainable)

with P_teacher the teacher's layers + lm_head. The load average (1 min) is printed at the start and
the end: on a shared machine the ratios, not the tokens/s, are what to compare.

    python bench/finetune.py [--examples 64] [--seq-len 128] [--epochs 2] [--methods ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

MODEL = "bundled:smollm2-135m-instruct"
RUNS = {
    "partial_cached": {"method": "partial", "cache_trunk": True},
    "partial_uncached": {"method": "partial", "cache_trunk": False},
    "lora": {"method": "lora", "learning_rate": 1e-4},
    "full": {"method": "full"},
    "distill_cached": {"method": "partial", "cache_trunk": True, "objective": "distill", "distill_top_k": 64},
    "distill_uncached": {"method": "partial", "cache_trunk": False, "objective": "distill", "distill_top_k": 64},
}
DEFAULT_RUNS = ("partial_cached", "partial_uncached", "lora", "full")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(device) -> int:  # type: ignore[no-untyped-def]
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def peak_bytes(device) -> int:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _status_kib("VmHWM") * 1024


def prepare_model(root: Path) -> tuple[Path, dict[str, int]]:
    """The bundled model with its last 25% of layers removed, saved as a plain directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.core.architecture import find_decoder_parts
    from layerprune.core.bundled import bundled_model_dir

    src = bundled_model_dir(MODEL)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    n = len(find_decoder_parts(model).layers)
    removed = list(range(n - math.floor(0.25 * n), n))
    try:
        from layerprune.core.removal import remove_layers

        remove_layers(model, removed)
    except ImportError:  # before the removal module landed: a plain slice is enough for Llama
        model.model.layers = model.model.layers[: n - len(removed)]
        model.config.num_hidden_layers = n - len(removed)
    out = root / "pruned"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out, {"layers_before": n, "layers_after": n - len(removed)}


def param_bound(model_dir: Path, k: int, teacher_dir: Path | None = None) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from layerprune.core.architecture import find_decoder_parts

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    parts = find_decoder_parts(model)
    layers = list(parts.layers)
    frozen = sum(p.numel() for layer in layers[: len(layers) - k] for p in layer.parameters())
    trainable = sum(p.numel() for layer in layers[len(layers) - k :] for p in layer.parameters())
    trainable += sum(p.numel() for p in parts.lm_head.parameters())
    if parts.final_norm is not None:
        trainable += sum(p.numel() for p in parts.final_norm.parameters())
    out = {"p_trunk": frozen, "p_trainable": trainable, "bound": (frozen + 3 * trainable) / (3 * trainable)}
    if teacher_dir is not None:
        t_parts = find_decoder_parts(AutoModelForCausalLM.from_pretrained(teacher_dir))
        teacher = sum(p.numel() for layer in t_parts.layers for p in layer.parameters())
        teacher += sum(p.numel() for p in t_parts.lm_head.parameters())  # a tied head still costs its matmul
        out["p_teacher"] = teacher
        out["distill_bound"] = (teacher + frozen + 3 * trainable) / (3 * trainable)
    return out


def per_epoch_tokens_per_s(history: list[dict]) -> list[float]:
    tokens: dict[int, float] = {}
    secs: dict[int, float] = {}
    for h in history:
        e = math.ceil(h["epoch"] - 1e-9)
        tokens[e] = tokens.get(e, 0) + h["tokens"]
        secs[e] = secs.get(e, 0) + h["time_s"]
    return [round(tokens[e] / secs[e], 1) for e in sorted(tokens)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--methods", default=",".join(DEFAULT_RUNS), help=f"any of {', '.join(RUNS)}")
    args = ap.parse_args(argv)

    import torch

    from layerprune.core.bundled import bundled_instructions, bundled_model_dir
    from layerprune.core.device import pick_device
    from layerprune.core.finetune import finetune_model
    from layerprune.core.spec import FinetuneSpec

    device = pick_device()
    root = Path(tempfile.mkdtemp(prefix="lp-bench-ft-"))
    model_dir, shape = prepare_model(root)
    data = root / "train.jsonl"
    rows = bundled_instructions()[: args.examples]
    data.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n" for r in rows))
    load_start = os.getloadavg()[0]
    teacher_dir = bundled_model_dir(MODEL)
    bound = param_bound(model_dir, args.k, teacher_dir if "distill" in args.methods else None)

    results: dict[str, dict] = {}
    for name in args.methods.split(","):
        spec = FinetuneSpec(dataset=str(data), epochs=args.epochs, max_seq_len=args.seq_len, batch_size=args.batch,
                            micro_batch_size=args.micro_batch, trainable_last_layers=args.k, warmup_steps=0,
                            checkpoint_every=10**6, **RUNS[name])
        base = reset_peak(device)
        t0 = time.perf_counter()
        res = finetune_model(model_dir, spec, root / f"out-{name}", root / f"work-{name}", device=device,
                             teacher_dir=teacher_dir)
        wall = time.perf_counter() - t0
        peak = peak_bytes(device)
        results[name] = {
            "tokens_per_s_by_epoch": per_epoch_tokens_per_s(res.history),
            "tokens_per_s": round(res.tokens_per_s, 1),
            "peak_mib": round(peak / 2**20, 1),
            "peak_above_start_mib": round((peak - base) / 2**20, 1),
            "trainable_params": res.trainable_params,
            "final_loss": round(res.final_loss, 4),
            "steps": res.steps,
            "train_s": round(res.timings["train"], 2),
            "wall_s": round(wall, 2),
        }
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        del res
        gc.collect()

    summary: dict[str, object] = {"bench": "finetune", "device": str(device), "torch_threads": torch.get_num_threads(),
                                  "model": MODEL, **shape, "k": args.k, "examples": len(rows),
                                  "max_seq_len": args.seq_len, "micro_batch": args.micro_batch, "batch": args.batch,
                                  "epochs": args.epochs, **{k: round(v, 4) for k, v in bound.items()},
                                  "runs": results}
    for prefix, key in (("", "bound"), ("distill_", "distill_bound")):
        run_c, run_p = ("distill_cached", "distill_uncached") if prefix else ("partial_cached", "partial_uncached")
        if run_c not in results or run_p not in results:
            continue
        cached, plain = results[run_c], results[run_p]
        later_cached = cached["tokens_per_s_by_epoch"][1:]
        later_plain = plain["tokens_per_s_by_epoch"][1:] or plain["tokens_per_s_by_epoch"]
        if later_cached:
            speedup = (sum(later_cached) / len(later_cached)) / (sum(later_plain) / len(later_plain))
            summary[f"{prefix}cached_later_epoch_speedup"] = round(speedup, 3)
            summary[f"{prefix}fraction_of_bound"] = round(speedup / bound[key], 3)
            summary[f"{prefix}within_10pct_of_bound"] = speedup >= 0.9 * bound[key]
    if "partial_cached" in results and "lora" in results:
        ratio = results["partial_cached"]["tokens_per_s"] / results["lora"]["tokens_per_s"]
        summary["cached_run_vs_lora"] = round(ratio, 3)
        summary["cached_run_at_least_1_4x_lora"] = ratio >= 1.4
    summary["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
