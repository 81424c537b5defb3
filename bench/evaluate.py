"""Examples/s of layerprune's evaluation vs lm-evaluation-harness's HF backend, same tasks/model/limit.

Both run in this process on the same model object (bundled SmolLM2-135M-Instruct by default; CUDA
bf16 when present, else CPU fp32) and the same documents (lm-eval's stock tasks read the raw offline
files through tests/lm_eval_raw.py). Each task is timed end to end for both: documents, prompts,
tokenization, scoring, metrics. lm-eval's TaskManager index is built once, outside the timings.
Prints one JSON line: per task examples/s of each, the speed-up, both accuracies; and overall.

Generative and last-word tasks (``--gen-tasks``; lm-eval reads them through
tests/core/evaluate/test_generative_agreement.py's raw-file tasks) are timed the same way, with their own
``--gen-limit``; their figures are reported apart (``generative``), with their scores, because
a generated example costs far more than a scored one.

    python bench/evaluate.py --limit 50 [--tasks arc_easy,piqa] [--batch-size 16] [--mmlu-limit 2]
    python bench/evaluate.py --tasks "" --gen-tasks gsm8k_cot,triviaqa,nq_open,lambada_openai --gen-limit 16
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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tests/lm_eval_raw.py (lm-eval's stock tasks on the raw offline files) lives in the repository's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,hellaswag,openbookqa,winogrande,boolq,mmlu")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--mmlu-limit", type=int, default=2, help="documents per MMLU subject (57 subjects)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side per task, alternating; the fastest counts")
    ap.add_argument("--gen-tasks", default="", help="generative/last-word tasks, e.g. gsm8k_cot,triviaqa,nq_open")
    ap.add_argument("--gen-limit", type=int, default=16, help="documents per generative task")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args(argv)

    import logging

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from layerprune.core.bundled import bundled_model_dir, is_bundled
    from layerprune.core.device import pick_device, pick_dtype
    from layerprune.core.evaluate.multiple_choice import run_tasks
    from layerprune.core.loading import load_model
    from tests.lm_eval_raw import ALSO_ACC_NORM, build_stock, stock_task_manager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = bundled_model_dir(args.model) if is_bundled(args.model) else Path(args.model)
    device = torch.device(args.device) if args.device else pick_device()
    model, tokenizer = load_model(model_dir, device=device, dtype=pick_dtype(device))
    tasks = [t for t in args.tasks.split(",") if t]
    limits = {t: (args.mmlu_limit if t == "mmlu" else args.limit) for t in tasks}

    tmp = Path(tempfile.mkdtemp(prefix="lp-bench-"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets_cache")
    tm = stock_task_manager(tasks)
    # WinoGrande's, BoolQ's and MMLU's yaml list only acc; lm-eval is asked for acc_norm too.
    overrides = {t: ALSO_ACC_NORM for t in ("winogrande", "boolq", "mmlu")}
    gen_tasks = [t for t in args.gen_tasks.split(",") if t]
    gen_names: dict[str, str] = {}
    gen_tm = None
    if gen_tasks:
        # lm-eval's stock generative tasks on the raw offline files (the agreement test's own reading).
        from tests.core.evaluate.test_generative_agreement import raw_task_configs

        gen_names = {t: n for t, n in raw_task_configs(tmp / "gen_tasks").items() if t in gen_tasks}
        from lm_eval.tasks import TaskManager

        gen_tm = TaskManager(include_path=str(tmp / "gen_tasks"), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=str(device))

    # Warm-up, untimed: both sides' documents parsed and cached (lm-eval's tasks built), and
    # one forward pass, so the timings compare steady-state evaluation.
    from layerprune.core.evaluate.loaders import load_docs
    from layerprune.core.evaluate.tasks import GROUPS, TASKS

    # lm-eval's tasks are built (data sets loaded and processed) once, as layerprune's documents are cached.
    built = {task: build_stock(tm, task, tmp / "data", overrides.get(task)) for task in tasks}
    for task in tasks:
        for leaf in GROUPS.get(task, (task,)):
            load_docs(TASKS[leaf], limits[task])
    run_tasks(model, tokenizer, ["arc_easy"], limit=2, batch_size=args.batch_size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    per_task: dict[str, dict] = {}
    total = {"examples": 0, "layerprune_s": 0.0, "lm_eval_s": 0.0, "layerprune_cpu_s": 0.0, "lm_eval_cpu_s": 0.0}
    for task in tasks:
        best = {"ours": (1e30, 1e30), "theirs": (1e30, 1e30)}
        for _ in range(args.repeat):
            # Alternating the two and keeping each one's fastest run damps a shared machine's noise.
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            ours = run_tasks(model, tokenizer, [task], limit=limits[task], batch_size=args.batch_size)[task]
            sync()
            t1, c1 = time.perf_counter(), time.process_time()
            theirs = simple_evaluate(model=lm, tasks=[built[task]], task_manager=tm, num_fewshot=0,
                                     limit=limits[task], log_samples=False, bootstrap_iters=0)["results"][task]
            sync()
            t2, c2 = time.perf_counter(), time.process_time()
            best["ours"] = (min(best["ours"][0], t1 - t0), min(best["ours"][1], c1 - c0))
            best["theirs"] = (min(best["theirs"][0], t2 - t1), min(best["theirs"][1], c2 - c1))
        (w_ours, c_ours), (w_theirs, c_theirs) = best["ours"], best["theirs"]
        n = ours["n"]
        per_task[task] = {
            "examples": n,
            "layerprune_ex_per_s": round(n / w_ours, 3),
            "lm_eval_ex_per_s": round(n / w_theirs, 3),
            "speedup": round(w_theirs / w_ours, 3),
            # CPU seconds of this process: steadier than wall time on a shared machine.
            "speedup_cpu_time": round(c_theirs / c_ours, 3),
            "acc": ours["acc"], "acc_norm": ours["acc_norm"],
            # lm-eval's mmlu group aggregates acc only.
            "lm_eval_acc": theirs["acc,none"], "lm_eval_acc_norm": theirs.get("acc_norm,none"),
        }
        total["examples"] += n
        total["layerprune_s"] += w_ours
        total["lm_eval_s"] += w_theirs
        total["layerprune_cpu_s"] += c_ours
        total["lm_eval_cpu_s"] += c_theirs
        print(f"{task}: {per_task[task]}", file=sys.stderr, flush=True)
    generative = bench_generative(model, tokenizer, lm, gen_tm, gen_names, args, sync) if gen_names else None
    overall = {
        "examples": total["examples"],
        "layerprune_ex_per_s": round(total["examples"] / total["layerprune_s"], 3),
        "lm_eval_ex_per_s": round(total["examples"] / total["lm_eval_s"], 3),
        "speedup": round(total["lm_eval_s"] / total["layerprune_s"], 3),
        "speedup_cpu_time": round(total["lm_eval_cpu_s"] / total["layerprune_cpu_s"], 3),
        "layerprune_s": round(total["layerprune_s"], 2), "lm_eval_s": round(total["lm_eval_s"], 2),
        "identical": all(v["acc"] == v["lm_eval_acc"] and v["lm_eval_acc_norm"] in (None, v["acc_norm"])
                         for v in per_task.values()),
    }
    out = {"bench": "evaluate", "model": args.model, "device": str(device), "dtype": str(pick_dtype(device)),
           "limit": args.limit, "mmlu_limit": args.mmlu_limit, "repeat": args.repeat, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "tasks": per_task, "overall": overall,
           "generative": generative}
    print(json.dumps(out))
    return out


def bench_generative(model, tokenizer, lm, tm, gen_names: dict[str, str], args, sync) -> dict:
    """Examples/s of each generative task, both sides on the same documents; scores must agree."""
    import time

    from lm_eval import simple_evaluate

    from layerprune.core.evaluate.generative import GEN_TASKS, run_generative_tasks

    run_generative_tasks(model, tokenizer, ["nq_open"], limit=1, batch_size=args.batch_size)  # warm-up
    per_task: dict[str, dict] = {}
    tot = {"examples": 0, "ours": 0.0, "theirs": 0.0, "ours_cpu": 0.0, "theirs_cpu": 0.0}
    for task, lm_name in gen_names.items():
        best = {"ours": (1e30, 1e30), "theirs": (1e30, 1e30)}
        for _ in range(args.repeat):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            ours = run_generative_tasks(model, tokenizer, [task], limit=args.gen_limit,
                                        batch_size=args.batch_size)[task]
            sync()
            t1, c1 = time.perf_counter(), time.process_time()
            theirs = simple_evaluate(model=lm, tasks=[lm_name], task_manager=tm, limit=args.gen_limit,
                                     log_samples=False, bootstrap_iters=0)["results"][lm_name]
            sync()
            t2, c2 = time.perf_counter(), time.process_time()
            best["ours"] = (min(best["ours"][0], t1 - t0), min(best["ours"][1], c1 - c0))
            best["theirs"] = (min(best["theirs"][0], t2 - t1), min(best["theirs"][1], c2 - c1))
        (w_o, c_o), (w_t, c_t) = best["ours"], best["theirs"]
        n = ours["n"]
        scores = {}
        identical = True
        for key in GEN_TASKS[task].metrics:
            metric, _, filt = key.partition(",")
            theirs_v = theirs[f"{metric},{filt or 'none'}"]
            theirs_v = float(theirs_v)
            scores[key] = {"layerprune": ours[key], "lm_eval": theirs_v}
            same = abs(ours[key] - theirs_v) <= 1e-5 * abs(theirs_v) if metric == "perplexity" else ours[key] == theirs_v
            identical = identical and bool(same)
        per_task[task] = {"examples": n, "layerprune_ex_per_s": round(n / w_o, 3), "lm_eval_ex_per_s": round(n / w_t, 3),
                          "speedup": round(w_t / w_o, 3), "speedup_cpu_time": round(c_t / c_o, 3),
                          "scores": scores, "identical": identical}
        print(f"{task}: {per_task[task]}", file=sys.stderr, flush=True)
        tot["examples"] += n
        tot["ours"] += w_o
        tot["theirs"] += w_t
        tot["ours_cpu"] += c_o
        tot["theirs_cpu"] += c_t
    return {"limit": args.gen_limit, "tasks": per_task, "overall": {
        "examples": tot["examples"], "layerprune_s": round(tot["ours"], 2), "lm_eval_s": round(tot["theirs"], 2),
        "speedup": round(tot["theirs"] / tot["ours"], 3), "speedup_cpu_time": round(tot["theirs_cpu"] / tot["ours_cpu"], 3),
        "identical": all(v["identical"] for v in per_task.values())}}


if __name__ == "__main__":
    main()
