"""LM healing against distillation healing at the same token budget. Prints ONE JSON line.

One process: SmolLM2-135M-Instruct loses its last 7 of 30 layers (reverse order), then partial
healing (lm_head + final norm + last k layers) runs twice on the same packed windows of the
bundled Wikipedia training split — once with the LM loss, once distilled from the unpruned model —
with identical steps, batches and learning rate. Reported: first/last training loss, the held-out
LM loss, and perplexity on the bundled evaluation split (disjoint from the training text) for the
base, the unhealed pruned model and both healed ones; the load average at start and end.

    python bench/distill_quality.py [--windows 96] [--seq-len 128] [--epochs 2] [--lr 1e-4]
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
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import MODEL, prepare_model  # noqa: E402  (the same 30 → 23 pruned model)


def training_text(root: Path, tokenizer, windows: int, seq_len: int) -> Path:  # type: ignore[no-untyped-def]
    """The first paragraphs of bundled:wikipedia-train that pack into ``windows`` full windows."""
    from layerprune.core.bundled import bundled_text

    texts, tokens = [], 0
    for t in bundled_text("wikipedia-train"):
        texts.append(t)
        tokens += len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
        if tokens >= windows * seq_len:
            break
    path = root / "train.txt"
    path.write_text("\n\n".join(texts))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=96)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--hidden-weight", type=float, default=0.0)
    ap.add_argument("--ppl-windows", type=int, default=40)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from layerprune.core.bundled import bundled_model_dir
    from layerprune.core.evaluate import evaluate_model
    from layerprune.core.finetune import finetune_model
    from layerprune.core.spec import EvaluateSpec, FinetuneSpec, PerplexitySpec

    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="lp-bench-distill-"))
    teacher = bundled_model_dir(MODEL)
    pruned, shape = prepare_model(root)
    data = training_text(root, AutoTokenizer.from_pretrained(teacher), args.windows, args.seq_len)
    ev = EvaluateSpec(perplexity=PerplexitySpec(dataset="bundled:wikipedia-eval", seq_len=args.seq_len,
                                                max_windows=args.ppl_windows))

    def ppl(model_dir: Path) -> float:
        return round(float(evaluate_model(model_dir, ev)["perplexity"]["value"]), 3)

    out: dict[str, object] = {"bench": "distill_quality", "model": MODEL, **shape, "k": args.k,
                              "seq_len": args.seq_len, "batch": args.batch, "epochs": args.epochs, "lr": args.lr,
                              "ppl_base": ppl(teacher), "ppl_pruned": ppl(pruned)}
    common = dict(dataset=str(data), format="text", packing=True, max_seq_len=args.seq_len, batch_size=args.batch,
                  micro_batch_size=args.micro_batch, epochs=args.epochs, learning_rate=args.lr, warmup_steps=2,
                  trainable_last_layers=args.k, validation_fraction=0.1, checkpoint_every=10**6)
    runs = {"lm": {}, "distill": {"objective": "distill", "distill_top_k": args.top_k, "distill_alpha": args.alpha,
                                  "distill_temperature": args.tau, "distill_hidden_weight": args.hidden_weight}}
    for name, extra in runs.items():
        spec = FinetuneSpec(**common, **extra)
        t0 = time.perf_counter()
        res = finetune_model(pruned, spec, root / f"out-{name}", root / f"work-{name}", teacher_dir=teacher)
        h = res.history
        out[name] = {"steps": res.steps, "tokens": sum(x["tokens"] for x in h), "first_loss": round(h[0]["loss"], 4),
                     "last_loss": round(h[-1]["loss"], 4), "first_ce": round(h[0].get("ce", h[0]["loss"]), 4),
                     "last_ce": round(h[-1].get("ce", h[-1]["loss"]), 4), "val_lm_loss": round(res.val_loss or 0, 4),
                     "ppl": ppl(root / f"out-{name}"), "train_s": round(res.timings["train"], 1),
                     "wall_s": round(time.perf_counter() - t0, 1)}
        if name == "distill":
            out[name]["first_kl"], out[name]["last_kl"] = round(h[0]["kl"], 4), round(h[-1]["kl"], 4)
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    out["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
