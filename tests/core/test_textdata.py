"""core.textdata: data set references, local file formats, texts and token windows; and the
torch-free format facts the API checks uploads with."""

from __future__ import annotations

import json

import pytest

from layerprune.core import bundled
from layerprune.core.errors import DatasetError
from layerprune.core.finetune.data import FIELDS, row_problem, validate_rows
from layerprune.core.textdata import (
    hub_offline,
    is_hub_id,
    load_rows,
    load_texts,
    read_jsonl,
    text_field,
    token_windows,
)


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


# ---- core.textdata on its own: references, file formats, texts and token windows -------------


@pytest.mark.parametrize(("ref", "hub"), [
    ("owner/name", True), ("HuggingFaceFW/fineweb-edu", True),
    ("bundled:wikipedia-train", False), ("/data/train.jsonl", False), ("./data/x", False),
    ("~/data/x", False), ("file_0123abcd", False), ("a/b/c", False), ("plain", False),
])
def test_is_hub_id(ref, hub):
    assert is_hub_id(ref) is hub


def test_a_relative_path_that_exists_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("owner/name")
    assert load_rows("owner/name") == [{"text": "x"}]


@pytest.mark.parametrize(("hub", "datasets", "offline"), [
    ("", "", False), ("0", "0", False), ("false", "False", False),
    ("1", "", True), ("", "1", True), ("true", "0", True),
])
def test_hub_offline_reads_either_variable(monkeypatch, hub, datasets, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", hub)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", datasets)
    assert hub_offline() is offline


def test_read_jsonl_names_the_bad_line_and_skips_blank_ones(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert read_jsonl(good) == [{"a": 1}, {"a": 2}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(DatasetError, match=r"bad.jsonl line 3: not valid JSON") as exc:
        read_jsonl(bad, param="finetune.dataset")
    assert exc.value.param == "finetune.dataset"
    array = tmp_path / "array.jsonl"
    array.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DatasetError, match="array.jsonl line 2: expected a JSON object"):
        read_jsonl(array)


def test_load_rows_reads_each_local_format(tmp_path):
    jsonl = tmp_path / "rows.JSONL"  # the suffix is matched case-insensitively
    jsonl.write_text('{"instruction": "a", "output": "b"}\n')
    assert load_rows(str(jsonl)) == [{"instruction": "a", "output": "b"}]
    js = tmp_path / "rows.json"
    js.write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    assert load_rows(str(js)) == [{"text": "one"}, {"text": "two"}]
    txt = tmp_path / "book.txt"
    txt.write_bytes(b"First  paragraph,\r\nstill the first.\r\n\r\nSecond\tone.\n\n\n\n  \n\nThird.\n")
    assert load_rows(str(txt)) == [{"text": "First paragraph, still the first."}, {"text": "Second one."},
                                   {"text": "Third."}]
    other = tmp_path / "notes.md"  # any other suffix is plain text too
    other.write_text("# Title\n\nBody.\n")
    assert load_rows(str(other)) == [{"text": "# Title"}, {"text": "Body."}]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("list.json", b'{"text": "a"}', "expected a JSON list of objects"),
    ("mixed.json", b'[{"text": "a"}, 3]', "expected a JSON list of objects"),
    ("broken.json", b"[{", "not valid JSON"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8 text"),
    ("empty.jsonl", b"\n\n", "holds no records"),
    ("empty.json", b"[]", "holds no records"),
    ("blank.txt", b"  \n\n \n", "holds no records"),
])
def test_load_rows_refuses_bad_files_naming_the_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as exc:
        load_rows(str(path), param="prune.calibration.dataset")
    assert exc.value.param == "prune.calibration.dataset"


def test_load_rows_refuses_a_directory_and_a_missing_reference(tmp_path):
    with pytest.raises(DatasetError, match="is a directory") as exc:
        load_rows(str(tmp_path), param="p")
    assert exc.value.param == "p"
    with pytest.raises(DatasetError, match="not found") as exc:
        load_rows(str(tmp_path / "missing.jsonl"), param="p")
    assert exc.value.param == "p"


def test_a_hub_reference_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="on the Hugging Face hub and this machine is offline") as exc:
        load_rows("someone/some-set:config", param="finetune.dataset")
    assert exc.value.param == "finetune.dataset"


def test_bundled_references():
    rows = load_rows("bundled:wikipedia-calibration")
    assert rows == [{"text": t} for t in bundled.bundled_text("bundled:wikipedia-calibration")]
    assert load_rows("bundled:wikitext-like") == load_rows("bundled:wikipedia-eval")
    instructions = load_rows("bundled:instructions")
    assert instructions and all({"instruction", "input", "output"} <= set(r) for r in instructions)
    with pytest.raises(DatasetError, match="unknown bundled text set") as exc:
        load_rows("bundled:nope", param="evaluate.perplexity.dataset")
    assert exc.value.param == "evaluate.perplexity.dataset"


def test_load_texts_reads_the_first_rows_text_field_and_drops_empty_texts(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"passage": "not read: text comes first in TEXT_FIELDS", "text": "one"},
        {"text": "two"}, {"text": "   "}, {"text": None}, {"other": "x"},
    ]) + "\n")
    assert load_texts(str(path)) == ["one", "two"]
    no_field = tmp_path / "no_field.jsonl"
    no_field.write_text('{"body": "x"}\n')
    with pytest.raises(DatasetError, match="have no text field") as exc:
        load_texts(str(no_field), param="d")
    assert exc.value.param == "d"
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": " "}\n{"text": ""}\n')
    with pytest.raises(DatasetError, match="has no text"):
        load_texts(str(blank))


def test_token_windows_cut_the_joined_texts():
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    texts = bundled.bundled_text("bundled:wikipedia-eval")[:20]
    # The reference: the same join and tokenisation, windows cut by hand.
    ids = tok(tok.eos_token.join(texts), add_special_tokens=False)["input_ids"]
    seq = 16
    consecutive = token_windows(texts, tok, seq, num=5)
    assert consecutive.shape == (5, seq) and str(consecutive.dtype) == "torch.int64"
    assert [row.tolist() for row in consecutive] == [ids[i * seq:(i + 1) * seq] for i in range(5)]
    every = token_windows(texts, tok, seq, num=None)
    assert every.shape == (len(ids) // seq, seq)
    assert token_windows(texts, tok, seq, num=10 ** 6).shape == every.shape  # capped without a seed
    seeded = token_windows(texts, tok, seq, num=7, seed=3)
    assert seeded.equal(token_windows(texts, tok, seq, num=7, seed=3))
    assert not seeded.equal(token_windows(texts, tok, seq, num=7, seed=4))
    for row in seeded.tolist():  # every seeded window is a real slice of the token stream
        assert any(ids[s:s + seq] == row for s in range(len(ids) - seq + 1))
    with pytest.raises(DatasetError, match=f"fewer than seq_len {len(ids) + 1}"):
        token_windows(texts, tok, len(ids) + 1, num=1)
