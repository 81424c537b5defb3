"""Model sources: bundled, local (model roots), job outputs, the hub offline; what we refuse to load."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerprune.core.errors import (
    ModelSourceError,
    PickleOnlyRefusedError,
    RemoteCodeRefusedError,
    SpecError,
    UnsupportedArchitectureError,
)
from layerprune.core.sources import check_model_dir, resolve_model, validate_model_ref


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bundled_model(bundled_dir: Path) -> None:
    source = resolve_model("bundled:smollm2-135m-instruct")
    assert source.kind == "bundled" and source.local_dir == bundled_dir
    assert source.license == "apache-2.0"
    digest = hashlib.sha256((bundled_dir / "config.json").read_bytes()).hexdigest()
    assert source.files["config.json"] == digest
    assert "model.safetensors" in source.files and "tokenizer.json" in source.files
    assert check_model_dir(source.local_dir).num_hidden_layers == 30


def test_local_directory_under_roots(tiny_dirs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    model = _copy(tiny_dirs("llama"), root / "team" / "tiny")
    (model / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    source = resolve_model(str(model), model_roots=[root])
    assert source.kind == "local" and source.local_dir == model.resolve()
    assert source.license == "mit"
    assert set(source.files) >= {"config.json", "model.safetensors", "README.md"}
    # A name relative to a root is a path there, not a hub id.
    assert resolve_model("team/tiny", model_roots=[root]).kind == "local"
    # Without roots (library use) any local directory is allowed.
    assert resolve_model(str(model)).kind == "local"


def test_local_directory_outside_roots_is_refused(tiny_dirs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = _copy(tiny_dirs("llama"), tmp_path / "elsewhere")
    for ref in (str(outside), str(root / ".." / "elsewhere")):
        with pytest.raises(SpecError) as err:
            resolve_model(ref, model_roots=[root])
        assert err.value.param == "model"
    # A symlink inside a root that points outside does not escape the check.
    (root / "link").symlink_to(outside)
    with pytest.raises(SpecError):
        validate_model_ref(str(root / "link"), [root])
    # Roots configured but empty: no local path at all.
    with pytest.raises(SpecError):
        validate_model_ref(str(outside), [])


def test_job_output(tiny_dirs, tmp_path: Path) -> None:
    out = _copy(tiny_dirs("llama"), tmp_path / "job_abc" / "output")
    (out / "layerprune.json").write_text(json.dumps({"license": "apache-2.0"}))
    source = resolve_model("job:job_abc", job_dir=lambda job_id: tmp_path / job_id / "output")
    assert source.kind == "job" and source.local_dir == out and source.license == "apache-2.0"
    with pytest.raises(ModelSourceError):
        resolve_model("job:job_abc")  # no callback outside the service
    with pytest.raises(ModelSourceError):
        resolve_model("job:job_missing", job_dir=lambda job_id: tmp_path / job_id / "output")


def test_hub_id_offline_fails_fast() -> None:
    # conftest sets HF_HUB_OFFLINE=1; the model is not in any local cache.
    t0 = time.monotonic()
    with pytest.raises(ModelSourceError) as err:
        resolve_model("layerprune-tests/does-not-exist", revision="main")
    assert time.monotonic() - t0 < 10
    assert "offline" in err.value.message and err.value.param == "model"


def test_hub_id_without_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not declared offline, but the endpoint refuses connections: the probe says so at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.raises(ModelSourceError) as err:
        resolve_model("layerprune-tests/does-not-exist")
    assert time.monotonic() - t0 < 10
    assert "unreachable" in err.value.message


@pytest.mark.parametrize(
    "ref",
    ["bundled:nope", "job:", "job:a b", "a/b/c", "-bad/name", "x" * 300, " padded", "org/../etc"],
)
def test_bad_references_are_spec_errors(ref: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_model_ref(ref, None)
    assert err.value.param == "model"


def test_missing_local_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        validate_model_ref(str(tmp_path / "nothing"), None)
    with pytest.raises(ModelSourceError):
        check_model_dir(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="config.json"):
        check_model_dir(tmp_path / "empty")


def test_validate_model_ref_does_not_import_torch() -> None:
    code = ("import sys; from layerprune.core.sources import validate_model_ref as v; "
            "v('bundled:smollm2-135m-instruct', None); v('org/model', None); v('job:job_1', None); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_remote_code_is_refused_naming_the_class(tiny_dirs, tmp_path: Path) -> None:
    model = _copy(tiny_dirs("llama"), tmp_path / "remote")
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["FancyForCausalLM"]
    cfg["auto_map"] = {"AutoConfig": "configuration_fancy.FancyConfig",
                       "AutoModelForCausalLM": "modeling_fancy.FancyForCausalLM"}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeRefusedError) as err:
        check_model_dir(model)
    assert "FancyForCausalLM" in err.value.message and err.value.code == "remote_code_refused"


def test_pickle_only_checkpoint_is_refused(tiny_dirs, tmp_path: Path) -> None:
    model = _copy(tiny_dirs("llama"), tmp_path / "pickled")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PickleOnlyRefusedError) as err:
        check_model_dir(model)
    assert "pytorch_model.bin" in err.value.message
    (model / "pytorch_model.bin").unlink()
    with pytest.raises(ModelSourceError, match="no safetensors"):
        check_model_dir(model)


def _write_config(path: Path, config) -> Path:
    path.mkdir(parents=True)
    config.save_pretrained(path)
    (path / "model.safetensors").write_bytes(b"")  # presence is enough for the refusal order
    return path


def test_encoder_and_encoder_decoder_are_unsupported(tmp_path: Path) -> None:
    from transformers import BertConfig, T5Config

    for name, config in (("bert", BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                             intermediate_size=32)),
                         ("t5", T5Config(num_layers=2, d_model=32, num_heads=2, d_ff=32))):
        with pytest.raises(UnsupportedArchitectureError) as err:
            check_model_dir(_write_config(tmp_path / name, config))
        assert err.value.code == "unsupported_architecture"


def test_unknown_model_type_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "mystery"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "mystery-lm", "architectures": ["MysteryLM"]}))
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedArchitectureError):
        check_model_dir(path)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "gpt_neox"])
def test_supported_families_pass(family: str, tiny_dirs) -> None:
    config = check_model_dir(tiny_dirs(family))
    assert config.model_type in {"llama", "gemma3_text", "gpt2", "gpt_neox"}


def test_load_model_cpu_defaults_and_refusals(tiny_dirs, tmp_path: Path) -> None:
    import torch

    from layerprune.core.loading import choose_device_map, load_model, weights_bytes

    src = tiny_dirs("llama")
    model, tokenizer = load_model(src)
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer is not None and tokenizer("hi").input_ids
    model, _ = load_model(src, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert weights_bytes(src, torch.bfloat16) * 2 == weights_bytes(src, torch.float32)
    assert choose_device_map(src, torch.device("cpu"), torch.float32) is None
    # A directory without a tokenizer still loads (pruning by position needs none).
    bare = _copy(src, tmp_path / "bare")
    for f in bare.glob("tokenizer*"):
        f.unlink()
    assert load_model(bare)[1] is None
    # load_model applies the same refusals as check_model_dir: never remote code.
    cfg = json.loads((bare / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (bare / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeRefusedError):
        load_model(bare)


def test_hub_model_already_in_the_cache_resolves_offline(tiny_dirs, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--layerprune-tests--tiny"
    _copy(tiny_dirs("llama"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # where this machine's cache lives
    source = resolve_model("layerprune-tests/tiny")
    assert source.kind == "hub" and source.commit == commit and "model.safetensors" in source.files
    assert source.to_dict()["commit"] == commit


def test_weight_patterns_follow_the_index(tmp_path: Path) -> None:
    from layerprune.core.sources import weight_patterns

    assert weight_patterns(tmp_path) == ["model.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                        "c": "model-00001-of-00002.safetensors"}}))
    assert weight_patterns(tmp_path) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ModelSourceError):
        weight_patterns(tmp_path)
