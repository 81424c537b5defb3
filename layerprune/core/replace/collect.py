"""Record, per run, the activations its map is fitted on, into chunks on disk.

For a run ``first … last`` with kept block ``i = first − 1``, on every calibration token:
``m`` = output of block i's MLP output projection, ``a`` = block i's output − ``m`` (the residual
stream the MLP output is added to: after attention on sequential blocks, input + attention on
GPT-NeoX's parallel ones), ``y`` = block ``last``'s output (before the final norm when ``last`` is
the last block). One forward per calibration batch serves every run; each batch's rows go to a
sink per run (the online normal equations, and the chunk store on disk when the fit needs to read
them again), so memory holds one batch whatever the calibration size. Calibration windows are full
token windows (no padding), so every position is a token.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.replace.plan import Run, Site


class _Stop(Exception):  # noqa: N818 - control flow: the blocks after the last target are not needed
    pass


class ChunkStore:
    """Activation chunks ``(a, m, y)`` per run, as float32 files under a private temporary folder."""

    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="layerprune_replace_", dir=parent))
        self.files: dict[int, list[Path]] = {}
        self.tokens: dict[int, int] = {}  # rows stored per run

    def append(self, run: int, a: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> None:
        files = self.files.setdefault(run, [])
        path = self.root / f"run{run}_{len(files):06d}.pt"
        torch.save({"a": a.float().cpu(), "m": m.float().cpu(), "y": y.float().cpu()}, path)
        files.append(path)
        self.tokens[run] = self.tokens.get(run, 0) + a.shape[0]

    def chunks(self, run: int, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, ...]]:
        for path in self.files.get(run, []):
            c = torch.load(path, map_location=device, weights_only=True)
            yield c["a"], c["m"], c["y"]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _out(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


Sink = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""sink(run_index, a, m, y) with [tokens, d] float32 tensors on the model's device."""


@torch.no_grad()
def collect(model: nn.Module, layers: nn.ModuleList, runs: Sequence[Run], sites: Sequence[Site],
            calibration: torch.Tensor, sink: Sink, *, batch_size: int = 1, hooks: Hooks = NO_HOOKS) -> int:
    """Pass every run's ``(a, m, y)`` over the calibration token ids [N, S] to ``sink``, a batch at a
    time; returns the tokens per run."""
    stop_after = max(r.last for r in runs)
    device = next(model.parameters()).device
    seen: dict[str, torch.Tensor] = {}

    def keep_proj(key: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            seen[key] = output.detach()
        return hook

    def keep_block(i: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            seen[f"out{i}"] = _out(output).detach()
            if i == stop_after:
                raise _Stop()
        return hook

    handles = []
    blocks = sorted({r.kept for r in runs} | {r.last for r in runs})
    for b in blocks:
        handles.append(layers[b].register_forward_hook(keep_block(b)))
    for site in sites:
        handles.append(site.module.register_forward_hook(keep_proj(f"m{site.block}")))
    tokens = 0
    try:
        n = calibration.shape[0]
        for start in range(0, n, batch_size):
            hooks.check()
            seen.clear()
            ids = calibration[start:start + batch_size].to(device)
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
            for r, run in enumerate(runs):
                d = seen[f"m{run.kept}"].shape[-1]
                m = seen[f"m{run.kept}"].reshape(-1, d).float()
                a = seen[f"out{run.kept}"].reshape(-1, d).float() - m
                y = seen[f"out{run.last}"].reshape(-1, d).float()
                sink(r, a, m, y)
            tokens += ids.numel()
            hooks.progress(min(start + batch_size, n), n, "replace: collecting activations")
    finally:
        for h in handles:
            h.remove()
    return tokens
