"""Before/after comparison of two :func:`evaluate_model` results (same settings, base vs pruned)."""

from __future__ import annotations

from typing import Any


def _delta(before: float | None, after: float | None) -> dict[str, float | None]:
    delta = after - before if before is not None and after is not None else None
    return {"before": before, "after": after, "delta": delta}


def compare_results(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Deltas (after - before) for perplexity, each task's metrics, params, size and layers.

    A task's metrics are acc/acc_norm, or those its result lists in ``higher_is_better``
    (generative tasks: ``exact_match,<filter>``; LAMBADA: acc and perplexity, which also gets
    ``ratio``).

    Perplexity also gets ``ratio`` (after / before); so does each measured speed figure, under
    ``speed`` when both sides measured it (``ratio`` > 1: faster after). Tasks present in only one result are left out:
    a comparison needs both sides scored the same way.
    """
    out: dict[str, Any] = {"perplexity": None, "tasks": {}}
    pb, pa = before.get("perplexity"), after.get("perplexity")
    if pb and pa:
        out["perplexity"] = {**_delta(pb["value"], pa["value"]), "ratio": pa["value"] / pb["value"]}
    for task, rb in (before.get("tasks") or {}).items():
        ra = (after.get("tasks") or {}).get(task)
        if ra is None:
            continue
        # Generative tasks list their own metrics (lm-eval's names, with their direction).
        metrics = rb.get("higher_is_better") or {"acc": True, "acc_norm": True}
        out["tasks"][task] = {m: _delta(rb.get(m), ra.get(m)) for m in metrics}
        for m in metrics:
            if m == "perplexity" and rb.get(m) and ra.get(m) is not None:
                out["tasks"][task][m]["ratio"] = ra[m] / rb[m]
    for key in ("params", "size_bytes", "num_layers", "generation_tokens_per_s"):
        out[key] = _delta(before.get(key), after.get(key))
    if before.get("speed") and after.get("speed"):
        from layerprune.core.evaluate.speed import compare_speed  # noqa: PLC0415 - keeps torch out of the CLI and API

        out["speed"] = compare_speed(before["speed"], after["speed"])
    if before.get("params") and after.get("params"):
        out["params"]["ratio"] = after["params"] / before["params"]
    return out


def speed_rows(metrics: Any) -> list[tuple[str, float | None, float | None, float | None]]:
    """``(label, before, after, speed-up)`` per measured speed figure of a job's ``metrics``.

    Labels read "prefill tok/s (batch 1)"; the speed-up is ``deltas.speed``'s ratio (after / before).
    """
    if not isinstance(metrics, dict):
        return []
    sides = [(metrics.get(k) or {}).get("speed") or {} for k in ("before", "after")]
    ratios = ((metrics.get("deltas") or {}).get("speed") or {}).get("batches") or {}
    batches = list(sides[1].get("batches") or sides[0].get("batches") or {})
    rows = []
    for stage in ("prefill", "decode"):
        key = f"{stage}_tokens_per_s"
        for b in batches:
            b_fig, a_fig = ((side.get("batches") or {}).get(b, {}).get(key) for side in sides)
            ratio = (ratios.get(b) or {}).get(key, {}).get("ratio")
            rows.append((f"{stage} tok/s (batch {b})", b_fig, a_fig, ratio))
    return rows


def sample_pairs(metrics: Any) -> list[tuple[str, str | None, str]]:
    """``(prompt, before text or None, after text)`` per sample answer of a job's ``metrics`` (samples.py).

    One reading for the CLI, the demo and the model card.
    """
    if not isinstance(metrics, dict):
        return []
    after = (metrics.get("after") or {}).get("samples") or []
    before = {s.get("prompt"): s.get("text") for s in (metrics.get("before") or {}).get("samples") or []}
    return [(s["prompt"], before.get(s["prompt"]), s["text"]) for s in after if "prompt" in s and "text" in s]


def mean_accuracy(result: Any) -> float | None:
    """The mean of each multiple-choice task's ``acc`` in one :func:`evaluate_model` result, None without any.

    The headline quality figure of the demo, bench/quality.py and studies: one definition.
    """
    tasks = result.get("tasks") if isinstance(result, dict) else None
    accs = [r["acc"] for r in (tasks or {}).values()
            if isinstance(r, dict) and "higher_is_better" not in r and isinstance(r.get("acc"), int | float)]
    return sum(accs) / len(accs) if accs else None
