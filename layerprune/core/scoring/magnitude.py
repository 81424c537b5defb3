"""magnitude_l1 / magnitude_l2: how large a block's weights are (shared/METHODS.md §1).

Weights only: every parameter of the block except biases, norms included; embeddings, lm_head and
the final norm are never ranked. ``magnitude_l2`` under "paper" semantics sums the Frobenius norm
of each weight (homogeneous of degree 1: scaling a block by c scales its score by c); under
"reference_code" it sums squares without the root (the paper's released code; degree 2).

Both need no forward pass, so they are also computed straight from the safetensors files, one
tensor at a time (:func:`magnitude_scores_from_files`), without ever holding the model in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from layerprune.core.architecture import find_decoder_parts, meta_model
from layerprune.core.errors import ModelSourceError, SpecError


def is_scored_weight(name: str) -> bool:
    """Biases are not weights here (the paper's definition counts weight matrices and norms)."""
    return not name.endswith("bias")


def tensor_magnitude(t: torch.Tensor, p: int, semantics: str) -> float:
    """One tensor's contribution: Σ|w| (p=1), ‖W‖_F (p=2, paper) or Σw² (p=2, reference_code)."""
    t = t.detach().float()
    if p == 1:
        return float(t.abs().sum())
    if p == 2:
        norm = torch.linalg.vector_norm(t)
        return float(norm * norm) if semantics == "reference_code" else float(norm)
    raise SpecError(f"magnitude order p must be 1 or 2, got {p}", param="prune.metric")


def magnitude_scores(model: nn.Module, p: int, semantics: str = "paper") -> list[float]:
    """Per current block of an in-memory model."""
    scores: list[float] = []
    for layer in find_decoder_parts(model).layers:
        total = 0.0
        for name, param in layer.named_parameters():
            if is_scored_weight(name):
                total += tensor_magnitude(param, p, semantics)
        scores.append(total)
    return scores


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"no safetensors weights in {model_dir}", param="model")
    return files


def magnitude_scores_from_files(model_dir: Path, p: int, semantics: str = "paper") -> list[float]:
    """Per block, streaming tensors from the safetensors files one at a time (equals the in-memory scores).

    Which keys count is taken from a meta-device copy of the model (no memory): the parameter
    names of block i, biases excluded. Buffers that old checkpoints stored (rotary ``inv_freq``)
    are therefore ignored, as the in-memory score ignores them.
    """
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    skeleton = meta_model(config)
    parts = find_decoder_parts(skeleton)
    prefix = parts.layers_path + "."
    wanted: dict[str, int] = {}
    for i, layer in enumerate(parts.layers):
        for name, _ in layer.named_parameters():
            if is_scored_weight(name):
                wanted[f"{prefix}{i}.{name}"] = i
    # Checkpoints saved from the bare base model lack its prefix ("layers.0." rather than
    # "model.layers.0."): accept both spellings.
    base = prefix.split(".", 1)[1] if prefix.count(".") > 1 else None
    scores = [0.0] * len(parts.layers)
    seen = 0
    for path in _safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                i = wanted.get(key)
                if i is None and base is not None and key.startswith(base):
                    i = wanted.get(prefix.split(".", 1)[0] + "." + key)
                if i is None:
                    continue
                scores[i] += tensor_magnitude(fh.get_tensor(key), p, semantics)
                seen += 1
    if seen != len(wanted):
        raise ModelSourceError(
            f"{model_dir}: found {seen} of the {len(wanted)} block weights in the safetensors files", param="model"
        )
    return scores
