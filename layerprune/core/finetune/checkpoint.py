"""Resumable training state in ``work_dir/checkpoints/step_N/``.

A checkpoint holds the trainable weights (``trainable.safetensors``) and ``state.pt``: step,
optimizer, scheduler, RNG states (python, numpy, torch, cuda), the loss history and a fingerprint
of the run's settings. Each is written into a temporary folder that is renamed into place, so a
process killed mid-write leaves no half checkpoint; only the last ``keep`` are kept. The data
position is the step itself: the micro-batch order of an epoch is a function of (seed, epoch).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from layerprune.core.fsutil import fsync_dir

_STEP = re.compile(r"^step_(\d+)$")


def checkpoints_dir(work_dir: Path) -> Path:
    return work_dir / "checkpoints"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(work_dir: Path, step: int, trainable: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 3) -> Path:
    """Write ``step_<step>`` atomically (temporary folder + rename) and prune older ones."""
    root = checkpoints_dir(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step}-", dir=root))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in trainable.items()}
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a rerun of the same step after a crash: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(work_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = checkpoints_dir(work_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / "state.pt").exists() and (p / "trainable.safetensors").exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(work_dir: Path) -> Path | None:
    found = list_checkpoints(work_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    trainable = load_file(str(path / "trainable.safetensors"))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return trainable, state
