"""Which worker queue a job goes to: ``gpu`` for anything beyond copy-and-rename work, else ``cpu``.

A service decision, made once at POST time and stored with the job (its ``queue``); core only
states what each metric needs (core/scoring/registry.py), which this rule reads.
"""

from __future__ import annotations

from typing import Literal

from layerprune.core.scoring.registry import metric_info
from layerprune.core.spec import GENERATIVE_TASKS, JobSpec

Queue = Literal["gpu", "cpu"]

# Evaluations up to this many examples per task stay on a CPU worker ...
CPU_EVAL_LIMIT = 200
# ... and generative ones (hundreds of forward passes per example) only up to this many.
CPU_GENERATIVE_LIMIT = 25


def queue_for(spec: JobSpec) -> Queue:
    return "gpu" if needs_gpu(spec) else "cpu"


def needs_gpu(spec: JobSpec) -> bool:
    """Whether the job belongs on the ``gpu`` queue."""
    if spec.finetune is not None and spec.finetune.method != "none":
        return True
    if spec.prune is not None and metric_info(spec.prune.metric).needs_gpu:
        return True
    if spec.prune is not None and spec.prune.replacement is not None:
        return True  # fitting the maps needs a forward pass over the calibration data
    ev = spec.evaluate
    if ev is not None and (ev.limit is None or ev.limit > CPU_EVAL_LIMIT):
        return True
    if ev is not None and ev.limit is not None and ev.limit > CPU_GENERATIVE_LIMIT \
            and set(ev.tasks) & set(GENERATIVE_TASKS):
        return True
    return False
