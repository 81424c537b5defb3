"""Layer scores shared through a ResultCache (core.scoring.cache + worker.cache): a ratio sweep scores
once, the cached run removes exactly what an uncached run removes, and two processes asking for
the same key at once compute it once."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from layerprune.core.hooks import Hooks
from layerprune.core.prune import prune_model
from layerprune.core.scoring.cache import LAYER_SCORES, model_identity
from layerprune.core.sources import hash_dir
from layerprune.core.spec import PruneSpec
from layerprune.worker.cache import FileResultCache


def _recording() -> tuple[Hooks, list[dict]]:
    seen: list[dict] = []
    return Hooks(log=lambda level, msg, data: seen.append(dict(data))), seen


@pytest.mark.parametrize("metric", ["block_influence", "taylor", "magnitude_l2"])
def test_a_ratio_sweep_scores_once_and_matches_an_uncached_run(tiny_dirs, tmp_path, metric):
    src = tiny_dirs("llama")
    cache = FileResultCache(tmp_path / "cache")
    model_id = model_identity(hash_dir(src))
    outcomes = []
    for i, n in enumerate((1, 2)):
        spec = PruneSpec(metric=metric, num_layers=n, calibration={"num_samples": 2, "seq_len": 16})
        hooks, seen = _recording()
        cached = prune_model(src, spec, tmp_path / f"c{i}", hooks, cache=cache, model_id=model_id)
        plain = prune_model(src, spec, tmp_path / f"p{i}")
        assert cached.removed_layers == plain.removed_layers
        assert cached.layer_scores == pytest.approx(plain.layer_scores)
        assert cached.calibration == plain.calibration  # provenance kept on a hit too
        outcomes += [d["outcome"] for d in seen if d.get("cache") == LAYER_SCORES]
    assert outcomes == ["computed", "hit"]


def _slow_compute(root: str, out: multiprocessing.Queue) -> None:
    cache = FileResultCache(root, poll_seconds=0.05)

    def compute() -> list[float]:
        time.sleep(1.0)
        return [1.0, 2.0]

    out.put(cache.get_or_compute(LAYER_SCORES, {"k": 1}, compute)[1])


def test_two_processes_compute_one_key_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_slow_compute, args=(str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    hits = sorted([q.get(timeout=60), q.get(timeout=60)])
    for p in procs:
        p.join(10)
    assert hits == [False, True]
