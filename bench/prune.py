"""Benchmark of pruning and scoring on the bundled model (issue 2, item 6). Prints ONE JSON line.

Every figure is a ratio against a baseline run in the same process (or, for memory, the same
subprocess), so the numbers mean the same on a laptop and on CI:

* streaming prune (reverse_order 25%): peak RSS above the interpreter's baseline vs 2 × the largest
  tensor, and time vs ``shutil`` copying the same number of kept bytes (goal ≤ 1.5);
* streamed magnitude_l2 scoring: peak RSS above baseline vs the largest tensor;
* block_influence / angular time vs one plain forward over the same calibration set (goal ≤ 1.3);
* ppl shared-prefix time vs the naive L full forwards, the FLOP bound sharing allows, and whether the
  two rank layers identically (goal: within 10% of the bound);
* taylor time vs one plain forward + backward over the same calibration set.

Memory is read from /proc/self/status (VmHWM, the peak resident set) in a fresh subprocess per
measurement, after resetting the peak once imports and setup are done (``/proc/self/clear_refs``).

    python bench/prune.py [--samples 10] [--seq-len 128] [--repeats 3] [--skip-naive]
                          [--stream-only] [--stream-repeats 9] [--stream-model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "bundled:smollm2-135m-instruct"


def log(message: str) -> None:
    # Progress on stderr: stdout carries only the one JSON line.
    print(f"[bench/prune {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset VmHWM to the current RSS where the kernel allows it; returns the baseline in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return status_kib("VmRSS")
    except OSError:
        return status_kib("VmHWM")


def largest_tensor_bytes(model_dir: Path) -> int:
    from layerprune.core.streaming import list_tensors

    entries, _ = list_tensors(model_dir)
    return max(e.nbytes for e in entries)


# ---- memory, one subprocess per measurement ------------------------------------------------------

def child_stream_prune(model_dir: str, tmp: str, removed: list[int], repeats: int) -> dict:
    """Streaming prune against a shutil copy of the same kept bytes, interleaved in one process.

    Both write the same number of bytes to the same disk, and each starts from the same state:
    outputs deleted and dirty pages flushed (os.sync) first. Left out, the page cache's background
    writeback of an earlier run lands on whichever run comes next, and swings either figure by 5×.
    """
    from transformers import AutoConfig

    from layerprune.core.architecture import meta_model
    from layerprune.core.streaming import stream_prune

    meta_model(AutoConfig.from_pretrained(model_dir))  # import the modeling code before the baseline
    work = Path(tmp)
    out, copy = work / "pruned", work / "copy.bin"
    prune_s, copy_s, rss, kept = float("inf"), float("inf"), 0, 0
    sample = None
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        base = reset_peak()
        t0 = time.perf_counter()
        summary = stream_prune(Path(model_dir), out, removed)
        prune_s = min(prune_s, time.perf_counter() - t0)
        rss = max(rss, (status_kib("VmHWM") - base) * 1024)
        kept = summary["bytes_written"]
        if sample is None:
            sample = work / "kept.bin"
            make_sample(Path(model_dir), kept, sample)
        copy.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        shutil.copyfile(sample, copy)
        copy_s = min(copy_s, time.perf_counter() - t0)
    return {"rss_above_baseline_bytes": rss, "seconds": prune_s, "shutil_copy_seconds": copy_s, "bytes_written": kept}


def make_sample(model_dir: Path, nbytes: int, dest: Path) -> None:
    """A file of the first ``nbytes`` bytes of the model's weight files (shard after shard, so a
    sharded ``--stream-model`` works too): what the shutil baseline copies."""
    from layerprune.core.streaming import weight_files

    left = nbytes
    with open(dest, "wb") as fout:
        for src in weight_files(model_dir):
            with open(src, "rb") as fin:
                while left and (chunk := fin.read(min(left, 16 << 20))):
                    fout.write(chunk)
                    left -= len(chunk)
    if left:
        raise ValueError(f"{model_dir}'s weight files hold fewer than {nbytes} bytes")


def child_stream_magnitude(model_dir: str) -> dict:
    from transformers import AutoConfig

    from layerprune.core.architecture import meta_model
    from layerprune.core.scoring import magnitude_scores_from_files

    meta_model(AutoConfig.from_pretrained(model_dir))
    base = reset_peak()
    t0 = time.perf_counter()
    magnitude_scores_from_files(Path(model_dir), 2)
    return {"rss_above_baseline_bytes": (status_kib("VmHWM") - base) * 1024, "seconds": time.perf_counter() - t0}


def in_subprocess(name: str, *args: object) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import prune; "
            f"print(json.dumps(prune.{name}(*{list(args)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- speed, in this process ----------------------------------------------------------------------

def interleaved(repeats: int, fns: dict) -> dict[str, tuple[float, float]]:  # type: ignore[type-arg]
    """Best (wall, CPU) seconds of each function, run in turn ``repeats`` times.

    Interleaving and CPU time (all threads of this process) keep the ratios honest on a machine
    shared with other work, where wall time alone swings with the load.
    """
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def ratio(a: tuple[float, float], b: tuple[float, float]) -> dict[str, float]:
    return {"seconds": round(a[0], 4), "cpu_seconds": round(a[1], 4),
            "ratio_wall": round(a[0] / b[0], 3), "ratio_cpu": round(a[1] / b[1], 3)}


def measured_cost_bound(model, ids, repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The sharing bound again, from the measured CPU time of one block call and of one head call.

    The FLOP bound counts lm_head as 2·params a token; the measured head (matmul, log-softmax over
    the vocabulary, the gather) costs more blocks than that, which moves the bound towards 1.
    """
    import torch

    from layerprune.core.scoring.capture import capture
    from layerprune.core.scoring.perplexity import head_nll

    with torch.no_grad():
        cap = capture(model, ids)
        mid = len(cap.calls) // 2
        t = interleaved(repeats, {"block": lambda: cap.calls[mid].run(cap.inputs[mid]),
                                  "head": lambda: head_nll(model, cap.inputs[-1], ids)})
    c, h = t["block"][1], t["head"][1]
    n = len(cap.calls)
    naive = n * ((n - 1) * c + h)
    shared = (n - 1) * c + n * (n - 1) / 2 * c + n * h
    return {"block_cpu_seconds": round(c, 4), "head_cpu_seconds": round(h, 4),
            "head_in_blocks": round(h / c, 2), "measured_bound": round(shared / naive, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-naive", action="store_true", help="skip the slow naive ppl baseline")
    ap.add_argument("--stream-repeats", type=int, default=9,
                    help="interleaved streaming prune / shutil runs (each ~0.1 s; the best of each is kept)")
    ap.add_argument("--stream-only", action="store_true", help="only the streaming figures (seconds, not minutes)")
    ap.add_argument("--stream-model", type=Path, default=None,
                    help="a local model directory for the streaming figures (default: the bundled model)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.core.architecture import num_layers_of
    from layerprune.core.bundled import bundled_model_dir
    from layerprune.core.device import pick_device, pick_dtype
    from layerprune.core.scoring import calibration_batches, score_layers
    from layerprune.core.scoring.perplexity import naive_ppl_scores, shared_prefix_cost_ratio
    from layerprune.core.spec import CalibrationSpec

    model_dir = bundled_model_dir(MODEL)
    figures: dict[str, object] = {"model": MODEL, "torch_threads": torch.get_num_threads()}

    # Streaming prune: reverse_order 25% (floor(0.25 × L) last layers).
    from transformers import AutoConfig

    stream_dir = args.stream_model or model_dir
    stream_layers = num_layers_of(AutoConfig.from_pretrained(stream_dir))
    removed = list(range(stream_layers - stream_layers // 4, stream_layers))
    largest = largest_tensor_bytes(stream_dir)
    log(f"streaming prune of {removed} vs shutil copy ({args.stream_repeats} interleaved runs, one subprocess)")
    with tempfile.TemporaryDirectory() as tmp_name:
        run = in_subprocess("child_stream_prune", str(stream_dir), tmp_name, removed, args.stream_repeats)
        kept, prune_s, copy_s, rss = (run["bytes_written"], run["seconds"], run["shutil_copy_seconds"],
                                      run["rss_above_baseline_bytes"])
        mag = in_subprocess("child_stream_magnitude", str(stream_dir))
    num_layers = num_layers_of(AutoConfig.from_pretrained(model_dir))
    k = num_layers // 4
    figures["stream_prune"] = {
        "model": str(args.stream_model) if args.stream_model else MODEL, "removed": removed, "kept_bytes": kept, "largest_tensor_bytes": largest,
        "peak_rss_above_baseline_bytes": rss, "rss_over_2x_largest_tensor": round(rss / (2 * largest), 3),
        "seconds": round(prune_s, 4), "shutil_copy_seconds": round(copy_s, 4),
        "time_over_shutil_copy": round(prune_s / copy_s, 3), "goal_time_ratio": 1.5,
    }
    figures["stream_magnitude_l2"] = {
        "peak_rss_above_baseline_bytes": mag["rss_above_baseline_bytes"],
        "rss_over_2x_largest_tensor": round(mag["rss_above_baseline_bytes"] / (2 * largest), 3),
        "seconds": round(mag["seconds"], 4),
    }

    if args.stream_only:
        print(json.dumps(figures))
        return

    log("scoring: plain forward, block_influence, angular")
    device = pick_device()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(device)).to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = calibration_batches(tok, CalibrationSpec(num_samples=args.samples, seq_len=args.seq_len)).to(device)
    figures["calibration"] = {"num_samples": args.samples, "seq_len": args.seq_len, "device": str(device)}

    def plain_forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    def forward_backward() -> None:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)

    plain_forward()  # warm-up
    t = interleaved(args.repeats, {
        "forward": plain_forward,
        "block_influence": lambda: score_layers(model, "block_influence", calibration=ids),
        "angular": lambda: score_layers(model, "angular", calibration=ids, block_size=k),
    })
    figures["forward"] = {"seconds": round(t["forward"][0], 4), "cpu_seconds": round(t["forward"][1], 4)}
    figures["block_influence_over_forward"] = {**ratio(t["block_influence"], t["forward"]), "goal": 1.3}
    figures["angular_over_forward"] = {**ratio(t["angular"], t["forward"]), "goal": 1.3}

    log("taylor vs forward + backward")
    t = interleaved(args.repeats, {
        "forward_backward": forward_backward,
        "taylor": lambda: score_layers(model, "taylor", calibration=ids),
    })
    figures["taylor_over_forward_backward"] = {**ratio(t["taylor"], t["forward_backward"]),
                                               "backwards_per_batch": 1}

    log("ppl shared prefix")
    shared_scores: list = []  # type: ignore[type-arg]
    naive_scores: list = []  # type: ignore[type-arg]
    fns = {"shared": lambda: shared_scores.append(score_layers(model, "ppl", calibration=ids))}
    if not args.skip_naive:
        fns["naive"] = lambda: naive_scores.append(naive_ppl_scores(model, ids))
    # Best of interleaved repeats like the rest: one run of each is at the mercy of the machine's load.
    t = interleaved(args.repeats, fns)
    shared = shared_scores[0]
    bound = shared_prefix_cost_ratio(model, args.seq_len)
    measured = measured_cost_bound(model, ids, args.repeats)
    ppl: dict[str, object] = {"shared_seconds": round(t["shared"][0], 3),
                              "shared_cpu_seconds": round(t["shared"][1], 3), "flop_bound": round(bound, 3),
                              **measured}
    if not args.skip_naive:
        naive = naive_scores[0]
        r = ratio(t["shared"], t["naive"])
        rank = sorted(range(num_layers), key=lambda i: shared[i])
        naive_rank = sorted(range(num_layers), key=lambda i: naive[i])
        ppl.update({
            "naive_seconds": round(t["naive"][0], 3), "naive_cpu_seconds": round(t["naive"][1], 3),
            "shared_over_naive_wall": r["ratio_wall"], "shared_over_naive_cpu": r["ratio_cpu"],
            "cpu_ratio_over_bound": round(r["ratio_cpu"] / bound, 3), "goal_over_bound": 1.1,
            "cpu_ratio_over_measured_bound": round(r["ratio_cpu"] / float(measured["measured_bound"]), 3),
            "identical_ranking": rank == naive_rank,
            "max_rel_diff": max(abs(a - b) / b for a, b in zip(shared, naive, strict=True)),
        })
    figures["ppl"] = ppl
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
