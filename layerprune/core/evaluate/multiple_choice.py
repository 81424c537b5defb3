"""Zero-shot multiple choice: build every task's requests, score them in one batched pass, aggregate.

Per document (lm-eval ``ConfigurableTask.process_results``): ``acc`` = argmax of the summed
log-likelihoods is the gold index; ``acc_norm`` = the same after dividing each by the character
length of its choice string (numpy's argmax: the first of equal maxima wins). Per task: the mean and
its standard error ``sample_stddev / sqrt(n)`` (ddof 1; None for n < 2). MMLU, as lm-eval's group:
the size-weighted mean over its 57 subjects and the pooled standard error
``sqrt(sum((n_i - 1) * se_i^2 * n_i) / (N - k) / N)``; per-subject and per-category figures are kept
as detail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from layerprune.core.errors import SpecError
from layerprune.core.evaluate.loaders import load_docs
from layerprune.core.evaluate.loglik import encode_pair, loglikelihoods, model_max_length
from layerprune.core.evaluate.tasks import GROUPS, MMLU_CATEGORIES, TASK_NAMES, TASKS, build_requests
from layerprune.core.hooks import NO_HOOKS, Hooks

METRICS = ("acc", "acc_norm")


def mean_stderr(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float | None:
    if sum(sizes) - len(sizes) <= 0:
        return None
    var = sum((n - 1) * se**2 * n for n, se in zip(sizes, stderrs, strict=True)) / (sum(sizes) - len(sizes))
    return float(np.sqrt(var / sum(sizes)))


def doc_scores(lls: list[float], gold: int, choice_lengths: list[float]) -> dict[str, float]:
    pred = np.argmax(lls)
    pred_norm = np.argmax(np.array(lls) / np.array(choice_lengths))
    return {"acc": 1.0 if pred == gold else 0.0, "acc_norm": 1.0 if pred_norm == gold else 0.0}


def summarize(per_doc: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in METRICS:
        values = [d[m] for d in per_doc]
        out[m] = sum(values) / len(values) if values else None
        out[f"{m}_stderr"] = mean_stderr(values)
    out["n"] = len(per_doc)
    return out


def aggregate(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lm-eval's group aggregation (weight_by_size) over leaf results."""
    sizes = [p["n"] for p in parts.values()]
    out: dict[str, Any] = {}
    for m in METRICS:
        values = [p[m] for p in parts.values()]
        out[m] = sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)
        stderrs = [p[f"{m}_stderr"] for p in parts.values()]
        out[f"{m}_stderr"] = None if any(s is None for s in stderrs) else pooled_stderr(stderrs, sizes)
    out["n"] = sum(sizes)
    return out


def check_task_names(names: list[str]) -> None:
    for i, name in enumerate(names):
        if name not in TASK_NAMES:
            raise SpecError(
                f"unknown task '{name}'; supported: {', '.join(TASK_NAMES)}", param=f"evaluate.tasks[{i}]"
            )


def _document_progress(names: list[str], docs_of: dict[str, list[tuple[list[int], int, list[float]]]],
                       num_requests: int, hooks: Hooks) -> Callable[[list[int]], None]:
    """A loglikelihoods ``on_scored`` that reports documents done per task (an MMLU subject counts
    for ``mmlu``): a document is done once all its choices are scored. Each call reports the task
    that advanced most in the batch, with every task's ``[done, total]`` in ``tasks``."""
    top = {leaf: name for name in names for leaf in GROUPS.get(name, (name,))}
    doc_of = [0] * num_requests
    task_of_doc: list[str] = []
    left: list[int] = []
    total = dict.fromkeys(names, 0)
    for leaf, docs in docs_of.items():
        for idx, _, _ in docs:
            for i in idx:
                doc_of[i] = len(left)
            task_of_doc.append(top[leaf])
            left.append(len(idx))
            total[top[leaf]] += 1
    done = dict.fromkeys(names, 0)

    def on_scored(batch: list[int]) -> None:
        moved = dict.fromkeys(names, 0)
        for i in batch:
            d = doc_of[i]
            left[d] -= 1
            if left[d] == 0:
                done[task_of_doc[d]] += 1
                moved[task_of_doc[d]] += 1
        task = max(names, key=lambda n: moved[n])
        hooks.detail({"task": task, "task_done": done[task], "task_total": total[task],
                      "tasks": {n: [done[n], total[n]] for n in names}})
        hooks.progress(sum(done.values()), sum(total.values()),
                       f"{task}: {done[task]}/{total[task]} documents")

    return on_scored


def run_tasks(
    model: Any,
    tokenizer: Any,
    names: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    hooks: Hooks = NO_HOOKS,
    share_prefix: bool = True,
) -> dict[str, dict[str, Any]]:
    """acc / acc_norm (with standard errors and n) of each named task; ``limit`` = first N docs per (sub)task."""
    check_task_names(names)
    leaves: list[str] = []
    for name in names:
        leaves.extend(GROUPS.get(name, (name,)))
    requests: list[tuple[list[int], list[int]]] = []
    groups: list[list[int]] = []
    docs_of: dict[str, list[tuple[list[int], int, list[float]]]] = {}
    for leaf in leaves:
        task = TASKS[leaf]
        docs_of[leaf] = []
        for doc in load_docs(task, limit):
            dr = build_requests(task, doc)
            idx = []
            for context, continuation in dr.pairs:
                idx.append(len(requests))
                requests.append(encode_pair(tokenizer, context, continuation))
            groups.append(idx)
            docs_of[leaf].append((idx, dr.gold, dr.choice_lengths))
    lls = loglikelihoods(
        model, requests, groups=groups, batch_size=batch_size,
        max_length=model_max_length(model.config, tokenizer), share_prefix=share_prefix, hooks=hooks,
        on_scored=_document_progress(names, docs_of, len(requests), hooks),
    )
    leaf_results: dict[str, dict[str, Any]] = {}
    for leaf, docs in docs_of.items():
        per_doc = [doc_scores([lls[i] for i in idx], gold, lengths) for idx, gold, lengths in docs]
        leaf_results[leaf] = summarize(per_doc)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in GROUPS:
            results[name] = leaf_results[name]
            continue
        subjects = {leaf.removeprefix(f"{name}_"): leaf_results[leaf] for leaf in GROUPS[name]}
        results[name] = aggregate(subjects)
        if name == "mmlu":
            results[name]["categories"] = {
                cat: aggregate({s: subjects[s] for s in subs}) for cat, subs in MMLU_CATEGORIES.items()
            }
        results[name]["subtasks"] = subjects
    return results
