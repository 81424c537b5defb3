"""Quality benchmark: which pruning recipe leaves the bundled model best, on a fixed CPU budget.

One process, SmolLM2-135M-Instruct, 25% of its layers removed (7 of 30). Each recipe runs as a
real job through ``core.pipeline.run_pipeline`` (prune → heal → export), then the result is
evaluated with the same settings as the dense model:

- perplexity on the held-out bundled Wikipedia paragraphs (``bundled:wikipedia-eval``, disjoint
  from the calibration and healing paragraphs), ``--ppl-windows`` windows of ``--ppl-seq-len``;
- zero-shot accuracy (``acc``) on ARC-Easy, PIQA and HellaSwag, first ``--limit`` documents of
  each (scored as lm-evaluation-harness scores them), and their mean;
- parameters (shared tensors counted once) and the CPU-seconds the prune and heal stages took
  (process CPU time, all threads).

Recipes (``--recipes`` picks some; ``--list`` prints them):

    paper            reverse order, heal lm_head + norm + last 3 layers, LM loss on instructions
    reverse-distill  reverse order, same trainable set, distillation from the dense model
    angular[-lm|-distill]          angular block, plain removal [healed with LM loss | distillation]
    angular-lstsq[-lm|-distill]    angular block replaced by a least-squares linear map [...]
    angular-cosine[-lm|-distill]   angular block replaced by a cosine-fitted linear map [...]
    angular-lstsq-distill-k11      as angular-lstsq-distill, healing the last 11 layers (all after the cut)

Every healed recipe gets the same token budget (``--heal-steps`` × ``--heal-batch`` sequences of
``--heal-seq-len`` tokens). The LM and distillation heals of the angular recipes read the same
bundled Wikipedia training paragraphs (plain text, packed), so they differ only in the
objective; ``paper`` heals on the bundled instructions as the paper does, and
``reverse-distill`` on the Wikipedia paragraphs (distillation needs no labels).

Goals (issue 13) for the best recipe: perplexity ≤ 1.5 × dense, mean accuracy ≥ 95% of dense.

    python bench/quality.py [--limit 500] [--heal-steps 30] [--recipes paper angular-lstsq-distill]

Prints the table, then ONE JSON line with every figure (``--out FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

MODEL = "bundled:smollm2-135m-instruct"
TASKS = ("arc_easy", "piqa", "hellaswag")
TEXT = {"dataset": "bundled:wikipedia-train", "format": "text", "packing": True}
INSTRUCTIONS = {"dataset": "bundled:instructions", "format": "alpaca"}
REVERSE = {"metric": "reverse_order", "num_layers": 7}
ANGULAR = {"metric": "angular", "num_layers": 7}
LSTSQ = {"method": "linear", "objective": "lstsq"}
COSINE = {"method": "linear", "objective": "cosine"}


def recipes() -> dict[str, dict[str, Any]]:
    """name → {"prune": prune spec, "heal": None | "lm" | "distill", "data": healing data}."""
    out: dict[str, dict[str, Any]] = {
        "paper": {"prune": REVERSE, "heal": "lm", "data": INSTRUCTIONS, "train_lm_head": True},
        "reverse-distill": {"prune": REVERSE, "heal": "distill", "data": TEXT, "train_lm_head": True},
    }
    for name, replace in (("angular", None), ("angular-lstsq", LSTSQ), ("angular-cosine", COSINE)):
        prune = dict(ANGULAR) if replace is None else {**ANGULAR, "replace": replace}
        out[name] = {"prune": prune, "heal": None}
        out[name + "-lm"] = {"prune": prune, "heal": "lm", "data": TEXT}
        out[name + "-distill"] = {"prune": prune, "heal": "distill", "data": TEXT}
    # Beyond the list: the same budget spent on every layer after the cut (the angular run
    # on this model is layers 12-18, so the last 11 of the 23 left), not only the last 3.
    out["angular-lstsq-distill-k11"] = {**out["angular-lstsq-distill"], "trainable_last_layers": 11}
    return out


def job_spec(recipe: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    prune = {**recipe["prune"], "calibration": {"num_samples": args.calibration_samples, "seq_len": 128}}
    spec: dict[str, Any] = {"model": MODEL, "prune": prune}
    if recipe["heal"] is not None:
        finetune: dict[str, Any] = {
            "method": "partial",
            "trainable_last_layers": recipe.get("trainable_last_layers", 3),
            # SmolLM2 ties lm_head to the embeddings: training it unties them (+28M parameters);
            # only the paper's own recipe pays that, as the paper does.
            "train_lm_head": bool(recipe.get("train_lm_head", False)),
            **recipe["data"],
            "max_steps": args.heal_steps,
            "batch_size": args.heal_batch,
            "micro_batch_size": min(args.heal_batch, 4),
            "max_seq_len": args.heal_seq_len,
            "learning_rate": args.learning_rate,
            "warmup_steps": min(10, args.heal_steps // 10),
        }
        if recipe["heal"] == "distill":
            finetune.update({"objective": "distill", "distill_temperature": 1.0, "distill_alpha": 1.0})
        spec["finetune"] = finetune
    return spec


DENSE = "dense (no pruning)"
# The settings that change a row's figures: a row taken with others is not reused. The healing
# settings change only the rows of recipes that heal.
EVAL_SETTINGS = ("limit", "ppl_windows", "ppl_seq_len", "calibration_samples")
HEAL_SETTINGS = ("heal_steps", "heal_batch", "heal_seq_len", "learning_rate")


def settings_key(args: argparse.Namespace, heals: bool = True) -> dict[str, Any]:
    return {k: getattr(args, k) for k in EVAL_SETTINGS + (HEAL_SETTINGS if heals else ())}


def heals(name: str) -> bool:
    return name != DENSE and recipes()[name]["heal"] is not None


def load_rows(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Rows of an earlier, interrupted run with the same settings (``--rows``), by recipe."""
    if args.rows is None or not args.rows.is_file():
        return {}
    out = {}
    for line in args.rows.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        name = row["recipe"]
        if name not in recipes() and name != DENSE:
            continue
        theirs = {k: v for k, v in (row.get("settings") or {}).items() if heals(name) or k not in HEAL_SETTINGS}
        if theirs == settings_key(args, heals(name)):
            out[name] = row
    return out


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def evaluate(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from layerprune.core.evaluate import evaluate_model
    from layerprune.core.evaluate.report import mean_accuracy
    from layerprune.core.spec import EvaluateSpec

    spec = EvaluateSpec.model_validate({
        "perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": args.ppl_seq_len,
                       "max_windows": args.ppl_windows},
        "tasks": list(TASKS), "limit": args.limit, "batch_size": 16,
    })
    t0 = time.perf_counter()
    res = evaluate_model(model_dir, spec)
    accs = {t: res["tasks"][t]["acc"] for t in TASKS}
    return {
        "perplexity": res["perplexity"]["value"],
        "acc": accs,
        "mean_acc": mean_accuracy(res),  # the one definition the demo, the CLI and studies use
        "params": res["params"],
        "num_layers": res["num_layers"],
        "eval_s": round(time.perf_counter() - t0, 1),
    }


def run_recipe(name: str, recipe: dict[str, Any], args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from layerprune.core.hooks import Hooks
    from layerprune.core.pipeline import OUTPUT_DIR, run_pipeline
    from layerprune.core.sources import resolve_model
    from layerprune.core.spec import JobSpec

    spec = JobSpec.model_validate(job_spec(recipe, args))
    source = resolve_model(spec.model)
    marks: list[tuple[str, float]] = []
    work = root / name
    t0 = time.perf_counter()
    result = run_pipeline(spec, source, work, Hooks(), on_stage=lambda stage: marks.append((stage, cpu_seconds())))
    marks.append(("end", cpu_seconds()))
    stage_cpu = {marks[i][0]: marks[i + 1][1] - marks[i][1] for i in range(len(marks) - 1)}
    row = {
        "recipe": name,
        "spec": spec.model_dump(mode="json", include={"prune", "finetune"}, exclude_none=True),
        "removed_layers": result["removed_layers"],
        "prune_cpu_s": round(stage_cpu.get("prune", 0.0), 1),
        "heal_cpu_s": round(stage_cpu.get("finetune", 0.0), 1),
        "job_wall_s": round(time.perf_counter() - t0, 1),
        "heal_loss": (result.get("finetune") or {}).get("final_loss"),
        "replace_fit": (result.get("prune") or {}).get("replacement"),
    }
    row.update(evaluate(work / OUTPUT_DIR, args))
    return row


def print_table(rows: list[dict[str, Any]], dense: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nbundled SmolLM2-135M-Instruct, 7 of 30 layers removed; accuracy on the first {args.limit} documents "
          f"of {', '.join(TASKS)}; perplexity on {args.ppl_windows} held-out windows of {args.ppl_seq_len} tokens")
    print(f"healing budget: {args.heal_steps} steps x {args.heal_batch} sequences x {args.heal_seq_len} tokens "
          f"(lr {args.learning_rate}), partial (last 3 layers + final norm unless the recipe says otherwise)\n")
    head = f"{'recipe':24} {'ppl':>10} {'x dense':>8} {'mean acc':>8} {'% dense':>7} " + \
        " ".join(f"{t[:9]:>9}" for t in TASKS) + f" {'params':>8} {'prune s':>7} {'heal s':>7}"
    print(head)
    print("-" * len(head))
    for r in [dense, *rows]:
        ratio = r["perplexity"] / dense["perplexity"]
        pct = 100 * r["mean_acc"] / dense["mean_acc"]
        accs = " ".join(f"{r['acc'][t]:9.3f}" for t in TASKS)
        print(f"{r['recipe']:24} {r['perplexity']:10.2f} {ratio:8.2f} {r['mean_acc']:8.3f} {pct:6.1f}% {accs} "
              f"{r['params'] / 1e6:7.1f}M {r.get('prune_cpu_s', 0):7.1f} {r.get('heal_cpu_s', 0):7.1f}")


DESCRIBE = {
    "paper": "reverse order, LM heal on instructions (the paper's recipe)",
    "reverse-distill": "reverse order, distillation heal",
    "angular": "angular block, plain removal, no healing",
    "angular-lm": "angular block, plain removal, LM heal",
    "angular-distill": "angular block, plain removal, distillation heal",
    "angular-lstsq": "angular + linear map (lstsq), no healing",
    "angular-lstsq-lm": "angular + linear map (lstsq), LM heal",
    "angular-lstsq-distill": "angular + linear map (lstsq), distillation heal",
    "angular-cosine": "angular + linear map (cosine), no healing",
    "angular-cosine-lm": "angular + linear map (cosine), LM heal",
    "angular-cosine-distill": "angular + linear map (cosine), distillation heal",
    "angular-lstsq-distill-k11": "angular + linear map (lstsq), distillation heal of the last 11 layers",
}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.2f}"


def print_markdown(rows: list[dict[str, Any]], dense: dict[str, Any]) -> None:
    """The same rows as a Markdown table (the README's), so the README copies figures, not retypes them."""
    print("| recipe | perplexity | × dense | mean acc | % of dense | ARC-Easy | PIQA | HellaSwag | params "
          "| prune CPU-s | heal CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in [dense, *rows]:
        ratio = r["perplexity"] / dense["perplexity"]
        pct = 100 * r["mean_acc"] / dense["mean_acc"]
        accs = " | ".join(f"{r['acc'][t]:.3f}" for t in TASKS)
        prune_s = f"{r['prune_cpu_s']:.0f}" if "prune_cpu_s" in r else "—"
        heal_s = f"{r['heal_cpu_s']:.0f}" if r.get("heal_cpu_s") else "—"
        name = DENSE if r is dense else f"{DESCRIBE.get(r['recipe'], r['recipe'])} (`{r['recipe']}`)"
        print(f"| {name} | {_num(r['perplexity'])} | {_num(ratio)} | {r['mean_acc']:.3f} | {pct:.1f}% "
              f"| {accs} | {r['params'] / 1e6:.1f}M | {prune_s} | {heal_s} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=None, help="recipe names (default: all)")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    p.add_argument("--limit", type=int, default=500, help="documents per task (default %(default)s)")
    p.add_argument("--ppl-windows", type=int, default=64)
    p.add_argument("--ppl-seq-len", type=int, default=256)
    p.add_argument("--calibration-samples", type=int, default=32)
    # 30 x 8 x 256 tokens: a distillation heal (the dearest: the teacher runs on every token) took
    # 11-14 minutes of one core on this model (README); two threads were not timed.
    p.add_argument("--heal-steps", type=int, default=30)
    p.add_argument("--heal-batch", type=int, default=8)
    p.add_argument("--heal-seq-len", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line to this file")
    p.add_argument("--markdown", action="store_true", help="also print the table in Markdown (the README's)")
    p.add_argument("--rows", type=Path, default=None,
                   help="keep every finished row in this JSONL file and reuse the rows already there that were "
                        "taken with the same settings, so a long run can be stopped and resumed")
    args = p.parse_args(argv)
    table = recipes()
    if args.list:
        for name, r in table.items():
            print(f"{name:24} {json.dumps(job_spec(r, args))}")
        return 0
    names = args.recipes or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; --list shows them")

    from layerprune.core.sources import resolve_model

    load0 = os.getloadavg()
    done = load_rows(args)

    def keep(row: dict[str, Any]) -> dict[str, Any]:
        row = {**row, "settings": settings_key(args, heals(row["recipe"])), "loadavg": os.getloadavg()}
        print(json.dumps(row), file=sys.stderr, flush=True)  # each row as it lands: a long run is readable early
        if args.rows is not None:
            with open(args.rows, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    dense = done.get(DENSE) or keep({"recipe": DENSE, **evaluate(Path(resolve_model(MODEL).local_dir), args)})
    rows = []
    with tempfile.TemporaryDirectory(prefix="lp-quality-") as tmp:
        for name in names:
            rows.append(done.get(name) or keep(run_recipe(name, table[name], args, Path(tmp))))
    print_table(rows, dense, args)
    if args.markdown:
        print()
        print_markdown(rows, dense)
    best = min(rows, key=lambda r: (r["perplexity"] > 1.5 * dense["perplexity"], -r["mean_acc"], r["perplexity"]))
    goals = {
        "best": best["recipe"],
        "ppl_ratio": best["perplexity"] / dense["perplexity"],
        "acc_ratio": best["mean_acc"] / dense["mean_acc"],
    }
    goals["met"] = goals["ppl_ratio"] <= 1.5 and goals["acc_ratio"] >= 0.95
    print(f"\nbest: {best['recipe']} (perplexity x{goals['ppl_ratio']:.2f} of dense, mean accuracy "
          f"{100 * goals['acc_ratio']:.1f}% of dense; goals {'met' if goals['met'] else 'NOT met'})")
    line = json.dumps({"bench": "quality", "args": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()},
                       "dense": dense, "rows": rows, "goals": goals,
                       "loadavg_start": load0, "loadavg_end": os.getloadavg()})
    print(line)
    if args.out:
        args.out.write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
