"""The torch-free format facts the API checks uploads with, and core's JSONL reader on odd input."""

from __future__ import annotations

import pytest

from layerprune.core.errors import DatasetError
from layerprune.core.finetune.data import FIELDS, row_problem, validate_rows
from layerprune.core.textdata import read_jsonl, text_field


def test_read_jsonl_refuses_deep_nesting_and_reads_past_a_bom(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_bytes(b'{"text": "a"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(DatasetError, match="line 2: JSON nested too deeply"):
        read_jsonl(deep)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n')
    assert read_jsonl(bom) == [{"text": "a"}]


@pytest.mark.parametrize("row", [
    {"instruction": "a", "output": "b"}, {"instruction": "a"}, {"instruction": "a", "output": 3},
    {"instruction": " ", "output": "b"}, {"instruction": "a", "context": "c", "response": "r"},
    {"text": "t"}, {"text": ""}, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, {"messages": []}, [1],
])
def test_row_problem_is_validate_rows_on_one_row(row):
    for fmt in FIELDS:
        try:
            validate_rows([row], fmt)
            expected = None
        except DatasetError as exc:
            expected = exc.message.removeprefix("row 1: ")
        assert row_problem(row, fmt) == expected


def test_text_field_is_the_first_known_field_of_the_first_row():
    assert text_field({"content": "x", "text": "y"}) == "text"
    assert text_field({"document": "x", "passage": "y"}) == "passage"
    assert text_field({"body": "x"}) is None


def test_the_api_checks_uploads_and_specs_without_torch():
    import subprocess
    import sys

    code = ("import sys, layerprune.api.file_checks, layerprune.api.validation; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
