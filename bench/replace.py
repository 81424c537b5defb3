"""Benchmark of prune.replace "linear" on the bundled model (issue 13). Prints ONE JSON line.

Ratios against baselines run in the same process, so they mean the same on a laptop and on CI:

* lstsq fit (additivity check + collection forward with the normal equations summed online +
  solve + report) vs one plain forward over the same calibration set;
* cosine fit (the same, every token spilled and re-read, ``--steps`` Adam steps) vs that forward;
* writing the pruned model with the maps folded in vs plain streaming removal of the same layers.

    python bench/replace.py [--samples 16] [--seq-len 128] [--layers 7] [--steps 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "bundled:smollm2-135m-instruct"


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import torch

    from layerprune.core.architecture import find_decoder_parts
    from layerprune.core.bundled import bundled_model_dir
    from layerprune.core.loading import load_model
    from layerprune.core.replace.plan import runs_of
    from layerprune.core.replace.write import fit_maps, write_with_maps
    from layerprune.core.scoring import calibration_batches
    from layerprune.core.spec import CalibrationSpec, ReplaceSpec
    from layerprune.core.streaming import stream_prune

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--layers", type=int, default=7, help="one run of this many layers, ending at L - 2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    src = bundled_model_dir(MODEL)
    model, tokenizer = load_model(src, device="cpu")
    calibration = calibration_batches(tokenizer, CalibrationSpec(num_samples=args.samples, seq_len=args.seq_len))
    num_layers = len(find_decoder_parts(model).layers)
    removed = list(range(num_layers - 1 - args.layers, num_layers - 1))
    runs = runs_of(removed)
    lstsq, cosine = ReplaceSpec(method="linear"), ReplaceSpec(method="linear", objective="cosine", steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def forward() -> None:
            with torch.no_grad():
                for row in range(0, calibration.shape[0]):
                    model(input_ids=calibration[row:row + 1], use_cache=False)

        t_forward = _best(forward, args.repeats)
        t_lstsq = _best(lambda: fit_maps(model, runs, calibration, lstsq, work_parent=work), args.repeats)
        t_cosine = _best(lambda: fit_maps(model, runs, calibration, cosine, work_parent=work), 1)
        sites, maps, _ = fit_maps(model, runs, calibration, lstsq, work_parent=work)
        prefix = find_decoder_parts(model).layers_path + "."
        t_plain = _best(lambda: stream_prune(src, work / "plain", removed), args.repeats)
        t_folded = _best(lambda: write_with_maps(src, work / "folded", removed, prefix, sites, maps), args.repeats)
    print(json.dumps({
        "model": MODEL, "tokens": int(calibration.numel()), "removed": removed, "load_avg": os.getloadavg(),
        "lstsq_fit_vs_forward": round(t_lstsq / t_forward, 3),
        "cosine_fit_vs_forward": round(t_cosine / t_forward, 3),
        "folded_write_vs_plain_write": round(t_folded / t_plain, 3),
        "seconds": {"forward": round(t_forward, 3), "lstsq": round(t_lstsq, 3), "cosine": round(t_cosine, 3),
                    "plain_write": round(t_plain, 3), "folded_write": round(t_folded, 3)},
    }))


if __name__ == "__main__":
    sys.exit(main())
