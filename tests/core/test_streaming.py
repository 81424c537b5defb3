"""Streaming removal (no model in memory) equals in-memory removal + save_pretrained."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from layerprune.core.errors import Cancelled, SpecError
from layerprune.core.hooks import Hooks
from layerprune.core.removal import remove_layers
from layerprune.core.streaming import (
    WEIGHTS_INDEX_NAME,
    layer_prefix_in_files,
    read_safetensors_header,
    rename_key,
    stream_prune,
)
from tests.tiny import FAMILIES, LAYERS

REMOVED = [0, 3, 7]


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _with_weights(src: Path, dest: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A copy of model directory ``src`` (config, tokenizer…) whose weights are ``tensors``."""
    dest.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (dest / f.name).write_bytes(f.read_bytes())
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _config(model_dir: Path) -> dict:
    cfg = AutoConfig.from_pretrained(model_dir).to_dict()
    cfg.pop("_name_or_path", None)
    return cfg


@pytest.mark.parametrize("family", FAMILIES)
def test_stream_equals_in_memory(family: str, tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs(family)
    model = AutoModelForCausalLM.from_pretrained(src)
    remove_layers(model, REMOVED)
    model.save_pretrained(tmp_path / "memory")

    info = stream_prune(src, tmp_path / "stream", REMOVED)

    a, b = _tensors(tmp_path / "memory"), _tensors(tmp_path / "stream")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert _config(tmp_path / "memory") == _config(tmp_path / "stream")
    assert info["keep"] == [i for i in range(LAYERS) if i not in REMOVED]
    assert info["num_layers_after"] == LAYERS - len(REMOVED)
    reloaded, loading = AutoModelForCausalLM.from_pretrained(tmp_path / "stream", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert reloaded.config.num_hidden_layers == LAYERS - len(REMOVED)
    assert info["params_before"] - info["params_after"] == (
        sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(src).parameters())
        - sum(p.numel() for p in reloaded.parameters())
    )


def test_sharded_output_and_side_files(tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("qwen2")
    info = stream_prune(src, tmp_path / "out", [2, 5], max_shard_bytes=60_000)
    out = tmp_path / "out"
    index = json.loads((out / WEIGHTS_INDEX_NAME).read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) == len(info["weight_files"]) > 1
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == info["bytes_written"]
    for shard in shards:
        header, start = read_safetensors_header(shard)
        assert start % 8 == 0 and header["__metadata__"]["format"] == "pt"
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                assert index["weight_map"][key] == shard.name
    # The sharded output is itself a valid streaming input (a second pass over shards).
    stream_prune(out, tmp_path / "again", [0])
    assert AutoConfig.from_pretrained(tmp_path / "again").num_hidden_layers == LAYERS - 3
    # Tokenizer, chat template and generation config travel with the weights.
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok("hello world").input_ids == AutoTokenizer.from_pretrained(src)(
        "hello world").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert len(reloaded.model.layers) == LAYERS - 2


def test_legacy_key_prefix(tiny_dirs, tmp_path: Path) -> None:
    """GPT-2 checkpoints on the hub store ``h.0.…`` without the ``transformer.`` prefix."""
    src = tiny_dirs("gpt2")
    tensors = load_file(src / "model.safetensors")
    legacy = _with_weights(src, tmp_path / "legacy", {k.removeprefix("transformer."): v for k, v in tensors.items()})
    stream_prune(legacy, tmp_path / "out", [1])
    keys = set(load_file(tmp_path / "out" / "model.safetensors"))
    assert "h.6.attn.c_attn.weight" in keys and "h.7.attn.c_attn.weight" not in keys
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["h.1.mlp.c_fc.weight"],
                       tensors["transformer.h.2.mlp.c_fc.weight"])


def test_rename_key_and_prefix_helpers() -> None:
    new_index = {0: 0, 2: 1}
    assert rename_key("model.layers.2.mlp.w", "model.layers.", new_index) == "model.layers.1.mlp.w"
    assert rename_key("model.layers.1.mlp.w", "model.layers.", new_index) is None
    assert rename_key("model.norm.weight", "model.layers.", new_index) == "model.norm.weight"
    assert layer_prefix_in_files(["model.layers.0.x", "lm_head.weight"], "model.layers.") == "model.layers."
    with pytest.raises(Exception, match="no tensor named like"):
        layer_prefix_in_files(["encoder.block.0.x"], "model.layers.")


def test_safetensors_written_by_hand_is_valid(tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("llama")
    stream_prune(src, tmp_path / "out", [])
    raw = (tmp_path / "out" / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    ends = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    # Contiguous data, no gap and no overlap, ending exactly at the end of the file.
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))
    assert ends[-1][1] == len(raw) - 8 - size
    assert _tensors(tmp_path / "out").keys() == _tensors(src).keys()


def test_stream_errors(tiny_dirs, tmp_path: Path) -> None:
    src = tiny_dirs("llama")
    with pytest.raises(ValueError, match="must differ"):
        stream_prune(src, src, [1])
    assert (src / "model.safetensors").is_file()
    for removed in ([1, 1], [LAYERS], list(range(LAYERS))):
        with pytest.raises(SpecError) as err:
            stream_prune(src, tmp_path / "bad", removed)
        assert err.value.param == "prune.layers"


def test_stream_cancel_and_progress(tiny_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tiny_dirs("llama")
    seen: list[tuple[float, float]] = []
    stream_prune(src, tmp_path / "ok", [1], Hooks(progress=lambda d, t, m: seen.append((d, t))))
    assert seen and seen[-1][0] == seen[-1][1]
    # Contiguous tensors copy as one run; a long run is still copied in pieces, with a cancel check
    # and a progress report before each (here 4 KiB pieces stand for 256 MiB ones).
    monkeypatch.setattr("layerprune.core.streaming._RUN_PIECE", 4096)
    seen.clear()
    stream_prune(src, tmp_path / "pieces", [1], Hooks(progress=lambda d, t, m: seen.append((d, t))))
    assert len(seen) > 10 and [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1]
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        stream_prune(src, tmp_path / "cancelled", [1], Hooks(should_stop=stop))


def test_mixed_dtypes_stay_aligned_and_the_bulk_copies_page_congruent(tiny_dirs, tmp_path: Path) -> None:
    """Output tensors keep the input's byte order within a dtype, every tensor starts aligned to
    its element size, and the header is padded so the largest contiguous run of kept bytes sits at
    the same in-page offset as in the input, on a 64 KiB boundary (the kernel's fast copy path)."""
    src = tiny_dirs("llama")
    tensors = load_file(src / "model.safetensors")
    # Norms in fp32 between bf16 matrices, and one odd-sized bf16 tensor that would misalign an
    # fp32 tensor written after it.
    converted = {k: v.float() if "norm" in k else v.to(torch.bfloat16) for k, v in tensors.items()}
    converted["model.layers.2.odd_bias"] = torch.ones(3, dtype=torch.bfloat16)
    mixed = _with_weights(src, tmp_path / "mixed", converted)

    stream_prune(mixed, tmp_path / "out", [1])
    out = tmp_path / "out" / "model.safetensors"
    header, data_start = read_safetensors_header(out)
    assert data_start % 8 == 0
    sizes = {"F32": 4, "BF16": 2}
    entries = sorted((v["data_offsets"][0], k, v) for k, v in header.items() if k != "__metadata__")
    for begin, key, info in entries:
        assert begin % sizes[info["dtype"]] == 0, key
    # fp32 first, then bf16; within each, the input's order.
    dtypes = [info["dtype"] for _, _, info in entries]
    assert dtypes == sorted(dtypes, key=lambda d: -sizes[d])
    in_header, in_start = read_safetensors_header(mixed / "model.safetensors")
    renamed = {k: rename_key(k, "model.layers.", {0: 0, **{i: i - 1 for i in range(2, LAYERS)}}) for k in in_header}
    for dtype in sizes:
        out_keys = [k for _, k, info in entries if info["dtype"] == dtype]
        in_keys = [renamed[k] for k in sorted((k for k in in_header if k != "__metadata__"),
                                              key=lambda k: in_header[k]["data_offsets"][0])
                   if in_header[k]["dtype"] == dtype and renamed[k] is not None]
        assert out_keys == in_keys
    # The longest stretch of tensors that are back to back in both files starts at the same offset
    # modulo a page as in the input, and on a 64 KiB boundary plus that offset.
    source = {renamed[k]: (in_start + v["data_offsets"][0], in_start + v["data_offsets"][1])
              for k, v in in_header.items() if k != "__metadata__" and renamed[k] is not None}
    runs: list[list] = []  # [output start, input start, bytes]
    for begin, key, info in entries:
        src_begin, src_end = source[key]
        nbytes = info["data_offsets"][1] - begin
        if runs and runs[-1][1] + runs[-1][2] == src_begin:
            runs[-1][2] += nbytes
        else:
            runs.append([data_start + begin, src_begin, nbytes])
    out_begin, in_begin, _ = max(runs, key=lambda r: r[2])
    assert len(runs) > 1
    assert (out_begin - in_begin) % 4096 == 0
    assert (out_begin - in_begin % 4096) % (64 * 1024) == 0
    reloaded = load_file(out)
    for key, value in converted.items():
        new = renamed[key]
        if new is not None:
            assert reloaded[new].dtype == value.dtype and torch.equal(reloaded[new], value), key


@pytest.mark.parametrize("kernel", ["refused", "missing"])
def test_buffered_copy_when_the_kernel_copy_is_refused_or_missing(kernel: str, tiny_dirs, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = tiny_dirs("qwen2")
    stream_prune(src, tmp_path / "kernel", REMOVED)
    calls = {"n": 0}

    def refuse(*args: object) -> int:
        calls["n"] += 1
        raise OSError(18, "Invalid cross-device link")

    if kernel == "refused":
        monkeypatch.setattr("os.copy_file_range", refuse)
    else:
        monkeypatch.delattr("os.copy_file_range")
    monkeypatch.setattr("layerprune.core.streaming._COPY_CHUNK", 1000)  # many short reads and writes
    stream_prune(src, tmp_path / "buffered", REMOVED)
    assert (tmp_path / "buffered" / "model.safetensors").read_bytes() == (
        tmp_path / "kernel" / "model.safetensors").read_bytes()
    # Refused once, never tried again for the rest of the file.
    assert calls["n"] == (1 if kernel == "refused" else 0)
