"""Which queue a job goes to (api/routing.py), from a table written out here, and through HTTP."""

from __future__ import annotations

import pytest

from layerprune.api.routing import queue_for
from layerprune.core.spec import JobSpec
from tests.api.helpers import PRUNE

# Metrics that run the model over calibration text belong on a GPU worker; the rest read at most
# the weights once (docs/methods.md §1). Written out, not read from the metric registry.
GPU_METRICS = {"taylor", "ppl", "block_influence", "angular"}
CPU_METRICS = {"reverse_order", "random", "magnitude_l1", "magnitude_l2"}


def _prune(metric: str) -> JobSpec:
    return JobSpec.model_validate({"prune": {"metric": metric, "num_layers": 2}})


@pytest.mark.parametrize("metric", sorted(GPU_METRICS | CPU_METRICS))
def test_metric_routing(metric: str) -> None:
    assert queue_for(_prune(metric)) == ("gpu" if metric in GPU_METRICS else "cpu")


@pytest.mark.parametrize(("body", "queue"), [
    ({"prune": {"metric": "manual", "layers": [3]}}, "cpu"),
    ({"prune": {"num_layers": 2, "replace": "linear"}}, "gpu"),  # fitting maps runs the model
    ({"prune": {"num_layers": 2}, "finetune": {"method": "none"}}, "cpu"),
    ({"prune": {"num_layers": 2}, "finetune": {"method": "partial"}}, "gpu"),
    ({"evaluate": {"tasks": ["arc_easy"], "limit": 200}}, "cpu"),
    ({"evaluate": {"tasks": ["arc_easy"], "limit": 201}}, "gpu"),
    ({"evaluate": {"tasks": ["arc_easy"]}}, "gpu"),  # no limit: the whole task
    ({"evaluate": {"tasks": ["gsm8k_cot"], "limit": 25}}, "cpu"),
    ({"evaluate": {"tasks": ["gsm8k_cot"], "limit": 26}}, "gpu"),  # generation is costly
    ({"evaluate": {"perplexity": {}, "limit": 10}}, "cpu"),
    # generation beyond a handful of examples goes to the gpu queue
    ({"evaluate": {"tasks": ["nq_open"], "limit": 20}}, "cpu"),
    ({"evaluate": {"tasks": ["nq_open"], "limit": 50}}, "gpu"),
    ({"evaluate": {"tasks": ["piqa"], "limit": 50}}, "cpu"),
])
def test_stage_routing(body: dict, queue: str) -> None:
    assert queue_for(JobSpec.model_validate(body)) == queue


@pytest.mark.parametrize("metric", ["angular", "magnitude_l1"])
def test_the_stored_job_carries_the_queue(client, new_tenant, metric: str) -> None:
    _, h = new_tenant
    body = {**PRUNE, "prune": {"metric": metric, "num_layers": 2}}
    r = client.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["queue"] == ("gpu" if metric in GPU_METRICS else "cpu")
