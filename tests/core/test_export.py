"""Export: the saved Hugging Face directory, its manifest, model card and provenance record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml

from layerprune.core.export import dir_manifest, library_versions, write_model_card_and_record


def test_dir_manifest(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes(b"hello")
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00" * 10)
    (tmp_path / ".hidden").write_text("x")
    manifest = dir_manifest(tmp_path)
    assert [m["path"] for m in manifest] == ["a.txt", "sub/b.bin"]
    assert manifest[0] == {"path": "a.txt", "size_bytes": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_and_record(tmp_path: Path) -> None:
    record = {
        "base_model": {"ref": "bundled:smollm2-135m-instruct", "revision": None, "kind": "bundled",
                       "license": "apache-2.0", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
                       "files": {"model.safetensors": "ab" * 32}},
        "spec": {"prune": {"metric": "block_influence", "num_layers": 2}},
        "prune": {"metric": "block_influence", "semantics": "paper", "removed_layers": [1, 2],
                  "layer_scores": [0.5, 0.1, 0.2, 0.9], "num_layers_before": 4, "num_layers_after": 2,
                  "params_before": 1000, "params_after": 600,
                  "calibration": {"dataset": "bundled:wikipedia-calibration", "num_samples": 10, "seq_len": 128,
                                  "seed": 42, "sha256": "cd" * 32},
                  "rounds": [{"round": 0, "removed": [1, 2]}]},
        "seed": 42,
        "timings": {"prune": 1.5},
    }
    write_model_card_and_record(tmp_path, record)
    saved = json.loads((tmp_path / "layerprune.json").read_text())
    assert saved["prune"]["removed_layers"] == [1, 2]
    assert saved["base_model"]["files"]["model.safetensors"] == "ab" * 32
    assert {"torch", "transformers", "layerprune"} <= set(saved["library_versions"])
    card = (tmp_path / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert "layerprune" in meta["tags"] and "prune-block_influence" in meta["tags"]
    assert "[1, 2]" in card and "1000" in card and "600" in card
    assert "| 1 | 0.1 | yes |" in card and "| 3 | 0.9 |  |" in card
    assert "bundled:wikipedia-calibration" in card


def test_model_card_from_a_pipeline_style_record(tmp_path: Path) -> None:
    # The pipeline nests stage results under "result"; a hub base model keeps its id.
    record = {"base_model": {"ref": "org/model", "kind": "hub", "license": None},
              "result": {"prune": {"metric": "reverse_order", "removed_layers": [3], "layer_scores": [None] * 4,
                                   "num_layers_before": 4, "num_layers_after": 3},
                         "metrics": {"after": {"perplexity": 12.5}}}}
    write_model_card_and_record(tmp_path, record)
    card = (tmp_path / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == "org/model" and "license" not in meta
    assert "4 → 3 layers" in card and "12.5" in card and "| layer |" not in card


def test_library_versions() -> None:
    versions = library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
