"""Prune a model directory with each removed run replaced by a fitted linear map (docs/methods.md §6.1).

Order of work: find the runs (refusing one at layer 0 before anything is loaded), find and verify
each fold site on the loaded model, collect activations (normal equations summed online; a sample,
or for the cosine objective every token, spilled to disk), fit the maps, then write plain removal
with :func:`stream_prune` and overwrite the folded weights in place.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.errors import SpecError
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.replace.collect import ChunkStore, collect
from layerprune.core.replace.fit import NormalEquations, evaluate, optimise_cosine, solve
from layerprune.core.replace.fold import write_folds
from layerprune.core.replace.plan import Run, check_additive, find_site, runs_of
from layerprune.core.spec import ReplaceSpec
from layerprune.core.streaming import stream_prune


def _fit_device(model: Any) -> torch.device:
    device = next(model.parameters()).device
    return device if device.type == "cuda" else torch.device("cpu")  # MPS has no float64


# With objective lstsq the chunks on disk only serve the fit report (cosine, residual), so at most
# this many tokens per run are kept for it; the normal equations themselves see every token.
REPORT_TOKENS = 16_384


def fit_run(eq: NormalEquations, store: ChunkStore, r: int, spec: ReplaceSpec, device: torch.device,
            hooks: Hooks = NO_HOOKS) -> tuple[torch.Tensor, dict[str, Any]]:
    """The map of run ``r`` (float64, CPU) from its normal equations and stored chunks, and its fit report."""

    def chunks():  # type: ignore[no-untyped-def]
        return store.chunks(r)

    t0 = time.monotonic()
    t, lam = solve(eq, spec.ridge)
    lstsq = evaluate(chunks, t, chunk_tokens=spec.chunk_tokens, device=device)
    report: dict[str, Any] = {"tokens": eq.tokens, "report_tokens": store.tokens.get(r, 0), "ridge_lambda": lam,
                              "cosine_removed": lstsq["cosine_removed"], "residual_removed": lstsq["residual_removed"],
                              "lstsq": {"cosine": lstsq["cosine"], "residual": lstsq["residual"]}}
    chosen = "lstsq"
    if spec.objective == "cosine":
        tc, losses = optimise_cosine(chunks, t, steps=spec.steps, learning_rate=spec.learning_rate,
                                     chunk_tokens=spec.chunk_tokens, device=device, check=hooks.check)
        cos = evaluate(chunks, tc, chunk_tokens=spec.chunk_tokens, device=device)
        report["cosine_objective"] = {"cosine": cos["cosine"], "residual": cos["residual"], "steps": spec.steps,
                                      "loss_first": losses[0], "loss_last": losses[-1]}
        # The optimiser sees one chunk per step; keep its map only when all tokens agree it is better.
        if cos["cosine"] >= lstsq["cosine"]:
            t, chosen = tc.to(torch.float64), "cosine"
    report["chosen"] = chosen
    final = report["lstsq"] if chosen == "lstsq" else report["cosine_objective"]
    report["cosine"], report["residual"] = final["cosine"], final["residual"]
    report["seconds"] = time.monotonic() - t0
    return t.detach().to("cpu", torch.float64), report


def _check_spill_space(parent: Path, tokens: int, d: int, runs: int) -> None:
    # The cosine objective re-reads every token's activations: 3 float32 vectors per token and run.
    need = tokens * d * 3 * 4 * runs
    free = shutil.disk_usage(parent).free
    if need > 0.9 * free:
        raise SpecError(f"replace objective 'cosine' spills {need / 1e9:.1f} GB of activations to disk and only "
                        f"{free / 1e9:.1f} GB are free; use fewer calibration tokens or objective 'lstsq' "
                        "(which keeps no activations)", param="prune.calibration.num_samples")


def fit_maps(model: Any, runs: Sequence[Run], calibration: torch.Tensor, spec: ReplaceSpec, *,
             batch_size: int = 1, work_parent: Path | None = None, hooks: Hooks = NO_HOOKS
             ) -> tuple[list[Any], list[torch.Tensor], list[dict[str, Any]]]:
    """Sites, maps and fit reports of ``runs`` on ``model`` (collected over ``calibration`` [N, S]).

    One forward per calibration batch feeds each run's normal equations (every token, float64) and
    its chunk store: every token for the cosine objective, the first ``REPORT_TOKENS`` for lstsq.
    """
    parts = find_decoder_parts(model)
    hidden = int(parts.embeddings.weight.shape[-1])
    sites = [find_site(parts.layers, run.kept, hidden) for run in runs]
    for site in sites:
        check_additive(model, parts.layers, site, calibration)
    device = _fit_device(model)
    keep = calibration.numel() if spec.objective == "cosine" else REPORT_TOKENS
    if spec.objective == "cosine":
        _check_spill_space(work_parent or Path(tempfile.gettempdir()), calibration.numel(), hidden, len(runs))
    eqs = [NormalEquations.zeros(hidden, device) for _ in runs]
    maps, reports = [], []
    with ChunkStore(work_parent) as store:

        def sink(r: int, a: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> None:
            for s in range(0, a.shape[0], spec.chunk_tokens):
                eqs[r].add(a[s:s + spec.chunk_tokens], m[s:s + spec.chunk_tokens], y[s:s + spec.chunk_tokens])
            room = keep - store.tokens.get(r, 0)
            if room > 0:
                store.append(r, a[:room], m[:room], y[:room])

        collect(model, parts.layers, runs, sites, calibration, sink, batch_size=batch_size, hooks=hooks)
        for r in range(len(runs)):
            hooks.check()
            t, report = fit_run(eqs[r], store, r, spec, device, hooks)
            eqs[r] = NormalEquations.zeros(0, device)  # free the two d×d float64 matrices before the next
            maps.append(t)
            reports.append(report)
            hooks.info(f"replace: fitted the map of layers {runs[r].first}..{runs[r].last}",
                       cosine_removed=report["cosine_removed"], cosine=report["cosine"], chosen=report["chosen"])
    return sites, maps, reports


def write_with_maps(src_dir: Path, out_dir: Path, removed: Sequence[int], module_prefix: str,
                    sites: Sequence[Any], maps: Sequence[torch.Tensor], hooks: Hooks = NO_HOOKS
                    ) -> tuple[dict[str, Any], list[str]]:
    """Plain removal of ``removed`` from ``src_dir`` into ``out_dir``, then each map folded in place."""
    summary = stream_prune(src_dir, out_dir, removed, hooks)
    keys = write_folds(out_dir, module_prefix, summary["keep"], list(zip(sites, maps, strict=True)))
    return summary, keys


def replace_and_write(src_dir: Path, out_dir: Path, removed: Sequence[int], spec: ReplaceSpec, model: Any,
                      calibration: torch.Tensor, *, original: Sequence[int] | None = None, batch_size: int = 1,
                      hooks: Hooks = NO_HOOKS) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``src_dir`` minus ``removed`` to ``out_dir`` with every removed run replaced by a map.

    ``model`` is ``src_dir``'s model, loaded with all its blocks; ``original[i]`` names block i in
    the numbering the report should use (the job's original layers). Returns stream_prune's summary
    and the replacement report (per run: blocks, fold key, tokens, λ, cosine and residual of plain
    removal, of least squares and of the cosine objective).
    """
    runs = runs_of(removed)
    t0 = time.monotonic()
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)  # the activations are spilled beside the output
    sites, maps, reports = fit_maps(model, runs, calibration, spec, batch_size=batch_size,
                                    work_parent=Path(out_dir).parent, hooks=hooks)
    module_prefix = find_decoder_parts(model).layers_path + "."
    fitted = time.monotonic()
    summary, keys = write_with_maps(src_dir, out_dir, removed, module_prefix, sites, maps, hooks)
    names = list(range(max(removed) + 1)) if original is None else [int(o) for o in original]

    def name(i: int) -> int:
        return names[i]

    out_runs = []
    for run, key, report in zip(runs, keys, reports, strict=True):
        out_runs.append({"layers": [name(i) for i in range(run.first, run.last + 1)], "kept_layer": name(run.kept),
                         "folded_into": key, **report})
    return summary, {"method": "linear", "objective": spec.objective, "ridge": spec.ridge,
                     "steps": spec.steps if spec.objective == "cosine" else 0, "learning_rate": spec.learning_rate,
                     "chunk_tokens": spec.chunk_tokens, "runs": out_runs,
                     "seconds": {"fit": fitted - t0, "write": time.monotonic() - fitted}}


def check_foldable(model: Any, calibration: torch.Tensor) -> None:
    """Refuse (SpecError on ``prune.replace``) a model whose blocks cannot take a folded map,
    checked on block 0 so that it fails before any scoring or collection."""
    parts = find_decoder_parts(model)
    site = find_site(parts.layers, 0, int(parts.embeddings.weight.shape[-1]))
    check_additive(model, parts.layers, site, calibration)
