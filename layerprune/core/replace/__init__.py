"""Replace removed runs of decoder blocks by linear maps folded into the model (docs/methods.md §6.1).

``plan`` finds the runs and where each map folds, ``collect`` records the activations the maps are
fitted on, ``fit`` solves for the maps (least squares, then optionally cosine), ``fold`` writes them
into the pruned model's files, and :func:`replace_and_write` runs the four for ``prune_model``.
"""

from layerprune.core.replace.write import replace_and_write

__all__ = ["replace_and_write"]
