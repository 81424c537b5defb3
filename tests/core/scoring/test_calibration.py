"""core.scoring.calibration: the windows come from the spec's data set, are cut from its texts
joined by the tokenizer's EOS, and a data set too short for one window is an error on
``prune.calibration.dataset`` that names it. (Seeding and the default data set: test_scoring.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerprune.core.errors import DatasetError
from layerprune.core.scoring.calibration import PARAM, calibration_batches
from layerprune.core.spec import CalibrationSpec
from tests.tiny import tiny_tokenizer

TEXTS = [f"Paragraph {i} tells of the river town number {i} and its {i * 3} bridges." for i in range(40)]


def contains(stream: list[int], window: list[int]) -> bool:
    n = len(window)
    return any(stream[s:s + n] == window for s in range(len(stream) - n + 1))


def test_windows_are_cut_from_the_spec_data_set(tmp_path: Path) -> None:
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    tok = tiny_tokenizer()
    spec = CalibrationSpec(dataset=str(data), num_samples=6, seq_len=20, seed=5)
    windows = calibration_batches(tok, spec)
    assert windows.shape == (6, 20) and windows.dtype == torch.long
    stream = tok(tok.eos_token.join(TEXTS), add_special_tokens=False)["input_ids"]
    for row in windows.tolist():
        assert contains(stream, row)
    # Texts are joined by EOS: with enough windows one spans a boundary (no BOS is ever added).
    many = calibration_batches(tok, CalibrationSpec(dataset=str(data), num_samples=40, seq_len=20, seed=5))
    assert (many == tok.eos_token_id).any()
    assert not (many == tok.bos_token_id).any()


def test_a_data_set_too_short_for_a_window_names_itself(tmp_path: Path) -> None:
    data = tmp_path / "tiny.txt"
    data.write_text("a few words only\n")
    with pytest.raises(DatasetError, match=f"calibration data set '{data}'.*fewer than seq_len 64") as err:
        calibration_batches(tiny_tokenizer(), CalibrationSpec(dataset=str(data), seq_len=64))
    assert err.value.param == PARAM == "prune.calibration.dataset"


def test_rows_without_text_are_an_error_on_the_field(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"number": 1}) + "\n")
    with pytest.raises(DatasetError) as err:
        calibration_batches(tiny_tokenizer(), CalibrationSpec(dataset=str(data)))
    assert err.value.param == PARAM
