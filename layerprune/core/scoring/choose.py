"""Which layers to remove, given a metric's scores (docs/methods.md §1). Indices are the current model's.

* reverse_order: the last k unprotected layers.
* random: k distinct unprotected layers drawn with ``random.Random(seed)`` (reproducible anywhere).
* scored metrics: the k lowest scores among unprotected, scored layers; ties go to the lower index.
  A None score (the last layer under reference-code BI) is never chosen.
* angular: scores are per block start ℓ (block ℓ..ℓ+k−1); the contiguous block with the smallest
  distance that holds no protected layer; ties go to the earlier block.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from layerprune.core.errors import SpecError
from layerprune.core.spec import METRICS


def choose_layers(
    metric: str,
    scores: list[float | None] | None,
    k: int,
    num_layers: int,
    *,
    protect: Iterable[int] = frozenset(),
    seed: int = 42,
    block_size: int = 1,
) -> list[int]:
    """Sorted indices of the k layers to remove.

    ``block_size`` is accepted for symmetry with :func:`score_layers`; angular's block is always k
    layers long (n = k, Gromov et al.), so its scores must have been computed with block_size=k.
    """
    if metric not in METRICS:
        raise SpecError(f"unknown metric '{metric}' (one of {', '.join(METRICS)})", param="prune.metric")
    if metric == "manual":
        raise SpecError("metric 'manual' removes the layers given in 'layers'; nothing to choose", param="prune.layers")
    if not 1 <= k < num_layers:
        raise SpecError(f"cannot remove {k} of {num_layers} layers (1 ≤ k < L)", param="prune.num_layers")
    protected = set(protect)
    for i in protected:
        if not 0 <= i < num_layers:
            raise SpecError(f"protect_layers index {i} is out of range [0, {num_layers})", param="prune.protect_layers")
    candidates = [i for i in range(num_layers) if i not in protected]

    if metric == "angular":
        return _choose_block(scores, k, num_layers, protected)
    if metric == "reverse_order":
        chosen = candidates[-k:] if len(candidates) >= k else None
    elif metric == "random":
        chosen = random.Random(seed).sample(candidates, k) if len(candidates) >= k else None
    else:
        if scores is None or len(scores) != num_layers:
            raise ValueError(f"{metric} needs one score per layer ({num_layers}), got {None if scores is None else len(scores)}")
        scored = [i for i in candidates if scores[i] is not None]
        # Stable: equal scores keep index order, so the lower index goes first.
        ranked = sorted(scored, key=lambda i: scores[i])  # type: ignore[arg-type, return-value]
        chosen = ranked[:k] if len(ranked) >= k else None
    if chosen is None:
        raise SpecError(
            f"only {len(candidates)} of {num_layers} layers can be chosen by {metric}; cannot remove {k}",
            param="prune.protect_layers",
        )
    return sorted(chosen)


def _choose_block(scores: list[float | None] | None, k: int, num_layers: int, protected: set[int]) -> list[int]:
    starts = num_layers - k + 1
    if scores is None or len(scores) != starts:
        raise ValueError(
            f"angular with k={k} needs {starts} block scores (one per start), got {None if scores is None else len(scores)}"
        )
    best: int | None = None
    for start in range(starts):
        score = scores[start]
        if score is None or any(i in protected for i in range(start, start + k)):
            continue
        if best is None or score < scores[best]:  # type: ignore[operator]
            best = start
    if best is None:
        raise SpecError(
            f"no block of {k} contiguous layers avoids the protected layers {sorted(protected)}",
            param="prune.protect_layers",
        )
    return list(range(best, best + k))
