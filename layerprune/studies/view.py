"""The study object as ``GET /v1/studies/{id}`` answers it, built from the study row and its jobs.

The study's status is derived from its jobs:

- ``queued`` while no job has started, ``running`` while any job is unfinished;
- once every job has finished: ``cancelled`` if a cancel of the study was requested, ``failed`` if
  the baseline failed or no candidate succeeded, else ``succeeded`` (a candidate that failed is
  reported as such among the others).

Figures (docs/contract.md, "Studies"): ``params`` after pruning; ``perplexity`` (lower is better);
``mean_acc``, the mean ``acc`` of the evaluated multiple-choice tasks
(core.evaluate.report.mean_accuracy; generative tasks have their own figures); ``quality``, the one of the two the study ranks by;
``speedup``, decode tokens/s of the candidate over the input model's at the smallest batch size,
measured in the same job one after the other (core/evaluate/speed.py), null when not measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from layerprune.core.evaluate.report import mean_accuracy
from layerprune.studies.pareto import Point, meets_constraints, params_front, recommend, speed_front

TERMINAL = ("succeeded", "failed", "cancelled")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def mean_acc(tasks: dict[str, Any] | None) -> float | None:
    """Mean multiple-choice accuracy: core.evaluate.report.mean_accuracy, the one definition."""
    return mean_accuracy({"tasks": tasks or {}})


def _perplexity(evaluation: dict[str, Any] | None) -> float | None:
    ppl = (evaluation or {}).get("perplexity")
    if isinstance(ppl, dict):
        ppl = ppl.get("value")
    return float(ppl) if isinstance(ppl, int | float) else None


def _smallest_batch(speed: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    batches = (speed or {}).get("batches") or {}
    if not batches:
        return None
    b = min(batches, key=lambda k: int(k))
    return b, batches[b]


def speed_figures(speed: dict[str, Any] | None) -> dict[str, Any] | None:
    found = _smallest_batch(speed)
    if found is None:
        return None
    b, fig = found
    return {"prefill_tokens_per_s": fig.get("prefill_tokens_per_s"), "decode_tokens_per_s": fig.get("decode_tokens_per_s"),
            "batch_size": int(b)}


def speedup(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    """Decode tokens/s after over before, at the smallest batch size both measured."""
    b = (before or {}).get("speed") or {}
    a = (after or {}).get("speed") or {}
    common = sorted(set(b.get("batches") or {}) & set(a.get("batches") or {}), key=int)
    if not common:
        return None
    x = b["batches"][common[0]].get("decode_tokens_per_s")
    y = a["batches"][common[0]].get("decode_tokens_per_s")
    return float(y) / float(x) if x and y is not None else None


def study_status(study: Any, jobs: Sequence[Any], baseline_id: str | None, candidate_ids: Sequence[str]) -> str:
    if any(j.status not in TERMINAL for j in jobs):
        return "queued" if all(j.status == "queued" for j in jobs) else "running"
    if study.cancel_requested_at is not None:
        return "cancelled"
    by_id = {j.id: j for j in jobs}
    if baseline_id is not None and by_id.get(baseline_id) is not None and by_id[baseline_id].status != "succeeded":
        return "failed"
    if not any(by_id[c].status == "succeeded" for c in candidate_ids if c in by_id):
        return "failed"
    return "succeeded"


def _job_finished(jobs: Sequence[Any]) -> datetime | None:
    stamps = [j.finished_at for j in jobs if j.finished_at is not None]
    return max(stamps) if stamps else None


def study_object(study: Any, jobs: Sequence[Any], spec: dict[str, Any]) -> dict[str, Any]:
    """``study``: the row; ``jobs``: every job of it; ``spec``: the spec as shown (secrets masked)."""
    plan = study.plan or {}
    by_id = {j.id: j for j in jobs}
    quality_name = plan.get("quality", "mean_acc")
    higher = bool(plan.get("higher_is_better", quality_name == "mean_acc"))
    constraints = (study.spec or {}).get("constraints") or {}
    max_params, min_speedup = constraints.get("max_params"), constraints.get("min_speedup")

    baseline_job = by_id.get(study.baseline_job_id) if study.baseline_job_id else None
    baseline: dict[str, Any] = {"job_id": study.baseline_job_id, "status": baseline_job.status if baseline_job else None,
                                "params": None, "results": {"perplexity": None, "mean_acc": None, "tasks": {}},
                                "speed": None}
    if baseline_job is not None and baseline_job.result:
        res = baseline_job.result
        after = (res.get("metrics") or {}).get("after") or {}
        baseline["params"] = res.get("params_before")
        baseline["results"] = {"perplexity": _perplexity(after), "mean_acc": mean_acc(after.get("tasks")),
                               "tasks": after.get("tasks") or {}}
        baseline["speed"] = speed_figures(after.get("speed"))

    candidates: list[dict[str, Any]] = []
    points: list[Point] = []
    labels: dict[str, str] = {}
    for entry in plan.get("candidates", []):
        job = by_id.get(entry["job_id"])
        results: dict[str, Any] = {"params": None, "perplexity": None, "mean_acc": None, "quality": None,
                                   "speedup": None}
        if job is not None and job.status == "succeeded" and job.result:
            res = job.result
            metrics = res.get("metrics") or {}
            after, before = metrics.get("after") or {}, metrics.get("before") or {}
            results["params"] = res.get("params_after")
            results["perplexity"] = _perplexity(after)
            results["mean_acc"] = mean_acc(after.get("tasks"))
            results["quality"] = results[quality_name]
            results["speedup"] = speedup(before, after)
        point = Point(entry["job_id"], results["quality"], results["params"], results["speedup"])
        points.append(point)
        labels[entry["job_id"]] = entry["label"]
        candidates.append({"job_id": entry["job_id"], "label": entry["label"],
                           "status": job.status if job is not None else None, "recipe": entry["recipe"],
                           "results": results, "pareto": {"params": False, "speed": False},
                           "meets_constraints": meets_constraints(point, max_params, min_speedup)})
    front_p = params_front(points, higher)
    front_s = speed_front(points, higher)
    for c in candidates:
        c["pareto"] = {"params": c["job_id"] in front_p, "speed": c["job_id"] in front_s}
    rec = recommend(points, higher, quality_name, max_params=max_params, min_speedup=min_speedup,
                    base_params=baseline["params"], labels=labels)
    candidate_ids = [c["job_id"] for c in candidates]
    status = study_status(study, jobs, study.baseline_job_id, candidate_ids)
    finished_at = study.finished_at
    if finished_at is None and status in TERMINAL:
        finished_at = _job_finished(jobs)
    updated = max([study.updated_at, *[j.updated_at for j in jobs if j.updated_at is not None]])
    return {
        "id": study.id,
        "object": "study",
        "status": status,
        "created_at": _iso(study.created_at),
        "updated_at": _iso(updated),
        "finished_at": _iso(finished_at),
        "cancel_requested_at": _iso(study.cancel_requested_at),
        "model": (study.spec or {}).get("model"),
        "metadata": dict(study.metadata_ or {}),
        "spec": spec,
        "baseline": baseline,
        "quality": {"name": quality_name, "higher_is_better": higher},
        "candidates": candidates,
        "pareto": {"params": front_p, "speed": front_s},
        "recommendation": {"job_id": rec.key, "reason": rec.reason} if rec is not None else None,
        "progress": {"done": sum(1 for c in candidates if c["status"] in TERMINAL), "total": len(candidates)},
    }
