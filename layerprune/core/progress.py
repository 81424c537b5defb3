"""How far along a job is: one number that moves forward in proportion to the work done.

A job's progress is the weighted sum of its stages' fractions. Equal shares made the bar sit at
75% for minutes while both evaluation passes ran (and jump back when the next pass restarted its
own count), so each stage's share is its measured cost, and the long stages report their parts
(base and result evaluation, perplexity windows, each task's documents) through :func:`within`.

The weights are measured seconds of the bundled-model demo job as ``tests/cli/data/demo_job.json``
recorded it (``layerprune demo``: SmolLM2-135M, reverse-order removal of 25% of the layers, 20
healing steps of 4 sequences of 256 tokens, base and result evaluated on 16 perplexity windows of
256 tokens and 25 documents each of ARC-Easy, PIQA and HellaSwag; 2 CPU cores under load): the
stages' seconds are its result's ``timings`` (prune 2.4, finetune 837, evaluate 396, export 0.02)
and the evaluation's parts each model's ``metrics.<side>.timings`` (base: load 1.2, perplexity 48.1,
tasks 171.6; result: 1.0, 36.6, 137.5). A second run of the same job (2026-11-30, load average
10–15; its record is tests/ops/data/demo_job_replay.json) took prune 0.7, finetune 837, evaluate
585, export 0.04 seconds: the evaluate weight is the mean of the two runs. Prune is raised to the 17 s that angular scoring on 32
calibration samples took (bench/results/quality-rows.jsonl), since most jobs score layers; export
to 1 s for the copy of a larger model. Generation and speed were not in that job: their figures
are estimates, marked below. Only ratios matter; a stage a job skips drops out and the rest are
renormalised. Pure: nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from layerprune.core.hooks import Hooks

# Seconds of each stage (see the module doc).
STAGE_WEIGHTS: dict[str, float] = {"prune": 17.0, "finetune": 837.0, "evaluate": 490.0, "export": 1.0}

# One evaluation's parts, in measured seconds per unit of work, so that a job of other sizes
# splits its evaluation in proportion (base model of the demo job: see the module doc).
EVAL_LOAD_S = 1.2
EVAL_PPL_WINDOW_S = 3.0  # one perplexity window of 256 tokens (48.1 s / 16); scaled by seq_len
EVAL_TASK_DOC_S = 2.3  # one multiple-choice document, all its choices scored (171.6 s / 75)
EVAL_GEN_DOC_S = 23.0  # estimate, not measured: a generative document as ten multiple-choice ones
SPEED_S = 40.0  # estimate, not measured: base and result at the default 2 batch sizes x 3 repeats
RESULT_EVAL_SHARE = 0.79  # the result (25% of the layers gone) evaluated in 175 s against the base's 221 s
# Documents per task assumed when the spec sets no limit, and windows when it sets no max_windows.
UNLIMITED_DOCS = 2_000
UNLIMITED_WINDOWS = 64


def _clamp(x: float) -> float:
    return 0.0 if x != x or x < 0.0 else 1.0 if x > 1.0 else x  # NaN counts as no progress


class JobProgress:
    """A job's overall progress from (stage, fraction of that stage), never going backwards.

    This is the one place a job's progress number is computed (the worker's reporter asks it for
    every row update and event); a stage that reports a smaller fraction than before, a retried
    stage or a restarted count leaves the number where it was.
    """

    def __init__(self, stages: Sequence[str], weights: Mapping[str, float] = STAGE_WEIGHTS) -> None:
        total = sum(weights.get(s, 1.0) for s in stages) or 1.0
        self.spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for stage in stages:
            share = weights.get(stage, 1.0) / total
            self.spans[stage] = (start, share)
            start += share
        self.value = 0.0

    def overall(self, stage: str | None, fraction: float) -> float:
        """The job's progress once ``stage`` is ``fraction`` done; at least the last value returned."""
        if stage in self.spans:
            start, share = self.spans[stage]
            self.value = max(self.value, min(1.0, start + share * _clamp(fraction)))
        return self.value


def within(hooks: Hooks, lo: float, hi: float, **labels: Any) -> Hooks:
    """Hooks for one part of a larger piece of work: its ``progress(done, total)`` lands in
    ``[lo, hi]`` of the parent's 0..1, and every progress call first sends the parent ``detail``
    with ``labels`` (e.g. ``part="after"``, ``task="piqa"``) and the part's own ``done``/``total``.

    Parts nest: the innermost labels and counts win, the outer ones fill in the rest.
    """
    inner: dict[str, Any] = {}

    def detail(values: Mapping[str, Any]) -> None:
        inner.clear()
        inner.update(values)

    def progress(done: float, total: float, message: str) -> None:
        frac = _clamp(done / total) if total else 0.0
        hooks.detail({**labels, "done": done, "total": total, **inner})
        hooks.progress(lo + (hi - lo) * frac, 1.0, message)

    def log(level: str, message: str, data: Mapping[str, Any]) -> None:
        # "after: perplexity 41.50 ..." says which model a figure is of.
        hooks.log(level, f"{labels['part']}: {message}" if "part" in labels else message, data)

    return dataclasses.replace(hooks, progress=progress, detail=detail, log=log)


def split(weights: Sequence[tuple[str, float]]) -> dict[str, tuple[float, float]]:
    """``[(part, weight), ...]`` → ``{part: (lo, hi)}`` covering 0..1 in order, in proportion."""
    total = sum(w for _, w in weights) or 1.0
    out: dict[str, tuple[float, float]] = {}
    start = 0.0
    for name, w in weights:
        out[name] = (start, start + w / total)
        start += w / total
    return out


def evaluation_cost(spec: Any, *, with_speed: bool = False) -> list[tuple[str, float]]:
    """The parts of one ``evaluate_model`` run of ``spec`` (an EvaluateSpec) and their estimated seconds."""
    from layerprune.core.evaluate.generative import GEN_TASK_NAMES  # noqa: PLC0415 - core.evaluate imports us (cycle)

    docs = spec.limit or UNLIMITED_DOCS
    parts = [("load", EVAL_LOAD_S)]
    if spec.perplexity is not None:
        parts.append(("perplexity", (spec.perplexity.max_windows or UNLIMITED_WINDOWS) * EVAL_PPL_WINDOW_S
                      * spec.perplexity.seq_len / 256))
    mc = [t for t in spec.tasks if t not in GEN_TASK_NAMES]
    gen = [t for t in spec.tasks if t in GEN_TASK_NAMES]
    if mc:
        parts.append(("tasks", docs * len(mc) * EVAL_TASK_DOC_S))
    if gen:
        parts.append(("generative", docs * len(gen) * EVAL_GEN_DOC_S))
    if with_speed and spec.speed is not None:
        parts.append(("speed", SPEED_S / 2))  # one model's share of SPEED_S
    return parts


def evaluate_stage_parts(spec: Any, compare: bool) -> dict[str, tuple[float, float]]:
    """The evaluate stage's parts (``before``: the input model, when compared; ``after``: the
    result; ``speed``: both measured together) as ``{part: (lo, hi)}`` of the stage."""
    one = sum(seconds for _, seconds in evaluation_cost(spec))
    parts: list[tuple[str, float]] = []
    if compare:
        parts += [("before", one), ("after", one * RESULT_EVAL_SHARE)]
    else:
        parts.append(("after", one))
    if spec.speed is not None:
        parts.append(("speed", SPEED_S if compare else SPEED_S / 2))
    return split(parts)
