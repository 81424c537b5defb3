"""Calibration token windows for the data-driven metrics (taylor, ppl, block_influence, angular).

Like the paper's 10 random 128-token windows: ``num_samples`` windows of ``seq_len`` tokens at
seeded random offsets of the concatenated texts. The default data set is a calibration split
disjoint from every evaluation text (core/spec.py).
"""

from __future__ import annotations

from typing import Any

import torch

from layerprune.core import textdata
from layerprune.core.errors import DatasetError
from layerprune.core.spec import CalibrationSpec

PARAM = "prune.calibration.dataset"


def calibration_batches(tokenizer: Any, spec: CalibrationSpec) -> torch.Tensor:
    """[num_samples, seq_len] token ids; a text too short for one window is a DatasetError on the data set."""
    texts = textdata.load_texts(spec.dataset, param=PARAM)
    try:
        return textdata.token_windows(texts, tokenizer, spec.seq_len, spec.num_samples, spec.seed)
    except DatasetError as exc:
        raise DatasetError(f"calibration data set '{spec.dataset}': {exc.message}", param=PARAM) from exc
