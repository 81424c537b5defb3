"""Remove layers from a model on disk without loading it (shared/METHODS.md §2, last paragraph).

Selections that need no forward pass (reverse order, manual, random, magnitude) only decide which
tensors to keep. :func:`stream_prune` reads the safetensors headers, plans output shards and
copies each kept tensor's raw bytes from the input file to the output file under its renamed key
(``model.layers.{keep[j]}.`` → ``model.layers.{j}.``). Bytes move file to file with
``os.copy_file_range`` (kernel side; a small buffered loop where that is unavailable), so memory
stays flat whatever the model size and the tensors are bit-identical by construction.

The safetensors format is simple enough to write directly: an 8-byte little-endian header length,
a JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`` padded
with spaces to a multiple of 8, then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerprune.core.errors import ModelSourceError, UnsupportedArchitectureError
from layerprune.core.hooks import NO_HOOKS, Hooks

DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # "5GB" as transformers counts it
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_COPY_CHUNK = 16 * 1024 * 1024

# Files that travel with the weights unchanged (tokenizer, chat template, generation config).
_COPIED_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
    "chat_template.*", "generation_config.json", "*.tiktoken", "spiece.model",
)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: list[int]
    file: Path
    begin: int  # absolute byte offset in ``file``
    nbytes: int


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the absolute offset where its data starts."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ModelSourceError(f"{path.name} is not a safetensors file (too short)", param="model")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 1024 * 1024:
            raise ModelSourceError(f"{path.name} has an implausible safetensors header", param="model")
        header = json.loads(fh.read(size))
    return header, 8 + size


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, in index order when sharded."""
    index = model_dir / WEIGHTS_INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"no safetensors weights in {model_dir}", param="model")
    return files


def list_tensors(model_dir: Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """Every tensor of a model directory (from headers only) and the first file's metadata."""
    entries: list[TensorEntry] = []
    metadata: dict[str, str] = {}
    for i, path in enumerate(weight_files(model_dir)):
        header, data_start = read_safetensors_header(path)
        if i == 0:
            metadata = dict(header.get("__metadata__") or {})
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            entries.append(TensorEntry(name, info["dtype"], list(info["shape"]), path, data_start + begin, end - begin))
    return entries, metadata


def layer_prefix_in_files(names: Sequence[str], module_prefix: str) -> str:
    """The key prefix of decoder blocks as the files spell it.

    Usually the module path (``model.layers.``), but older checkpoints drop the outer module
    (GPT-2 on the hub stores ``h.0.…``, not ``transformer.h.0.…``): try ever shorter suffixes.
    """
    parts = module_prefix.rstrip(".").split(".")
    for start in range(len(parts)):
        prefix = ".".join(parts[start:]) + "."
        if any(n.startswith(prefix) and n[len(prefix):].split(".", 1)[0].isdigit() for n in names):
            return prefix
    raise UnsupportedArchitectureError(
        f"no tensor named like '{module_prefix}<i>.' in the weights; cannot prune them on disk", param="model"
    )


def rename_key(name: str, prefix: str, new_index: dict[int, int]) -> str | None:
    """``prefix{old}.rest`` → ``prefix{new}.rest``; None for a removed layer; others unchanged."""
    if not name.startswith(prefix):
        return name
    head, dot, rest = name[len(prefix):].partition(".")
    if not head.isdigit() or not dot:
        return name
    new = new_index.get(int(head))
    return None if new is None else f"{prefix}{new}.{rest}"


_DTYPE_SIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2}


def _plan_shards(tensors: list[tuple[str, TensorEntry]], max_bytes: int) -> list[list[tuple[str, TensorEntry]]]:
    # Wider dtypes first so every tensor starts at an offset aligned to its element size.
    ordered = sorted(tensors, key=lambda t: (-_DTYPE_SIZE.get(t[1].dtype, 1), t[0]))
    shards: list[list[tuple[str, TensorEntry]]] = [[]]
    size = 0
    for item in ordered:
        if shards[-1] and size + item[1].nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item[1].nbytes
    return shards


def _copy_range(src: Any, dst: Any, offset: int, count: int) -> None:
    remaining = count
    pos = offset
    use_kernel = hasattr(os, "copy_file_range")
    while remaining > 0:
        if use_kernel:
            try:
                n = os.copy_file_range(src.fileno(), dst.fileno(), remaining, pos)
            except OSError:
                use_kernel = False  # e.g. across some filesystems: fall back to buffered copy
                continue
            if n == 0:
                raise ModelSourceError("a safetensors file ended early", param="model")
        else:
            src.seek(pos)
            chunk = src.read(min(_COPY_CHUNK, remaining))
            if not chunk:
                raise ModelSourceError("a safetensors file ended early", param="model")
            dst.seek(0, os.SEEK_END)
            dst.write(chunk)
            n = len(chunk)
        pos += n
        remaining -= n


def _write_shard(path: Path, items: list[tuple[str, TensorEntry]], metadata: dict[str, str], hooks: Hooks,
                 done: list[int], total: int) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, entry in items:
        header[name] = {"dtype": entry.dtype, "shape": entry.shape, "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    handles: dict[Path, Any] = {}
    try:
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            out.flush()
            for _name, entry in items:
                hooks.check()
                src = handles.get(entry.file)
                if src is None:
                    src = handles[entry.file] = open(entry.file, "rb")
                _copy_range(src, out, entry.begin, entry.nbytes)
                done[0] += entry.nbytes
                hooks.progress(done[0], total, f"copying {path.name}")
    finally:
        for fh in handles.values():
            fh.close()


def _copy_side_files(src_dir: Path, out_dir: Path) -> list[str]:
    copied = []
    for pattern in _COPIED_PATTERNS:
        for f in sorted(src_dir.glob(pattern)):
            if f.is_file() and not (out_dir / f.name).exists():
                shutil.copy2(f, out_dir / f.name)
                copied.append(f.name)
    return copied


def stream_prune(src_dir: Path, out_dir: Path, removed: Sequence[int], hooks: Hooks = NO_HOOKS, *,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> dict[str, Any]:
    """Write ``src_dir`` minus the decoder layers ``removed`` to ``out_dir``, tensor by tensor.

    The result loads with ``from_pretrained`` and equals in-memory removal + ``save_pretrained``
    (same tensors, bit for bit; same config). Returns a summary: keep list, layer counts,
    parameter counts before/after, output weight files and bytes written.
    """
    from transformers import AutoConfig

    from layerprune.core.architecture import (
        count_params,
        find_decoder_parts,
        layer_param_count,
        meta_model,
        num_layers_of,
    )
    from layerprune.core.removal import cut_layer_config, keep_list, refuse_index_dependent_math

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if out_dir.resolve() == src_dir.resolve():
        # Writing over the input would delete the shards being read.
        raise ValueError(f"stream_prune: the output directory must differ from the input ({src_dir})")
    config = AutoConfig.from_pretrained(src_dir, trust_remote_code=False)
    num_layers = num_layers_of(config)
    keep = keep_list(removed, num_layers)
    if len(keep) < num_layers:
        refuse_index_dependent_math(config)
    # One structure-only (meta) model gives the key prefix and the parameter counts.
    skeleton = meta_model(config)
    parts = find_decoder_parts(skeleton)
    params_before = count_params(skeleton)
    kept_set = set(keep)
    params_removed = sum(layer_param_count(parts.layers[i]) for i in range(num_layers) if i not in kept_set)
    module_prefix = parts.layers_path + "."
    del skeleton, parts

    entries, metadata = list_tensors(src_dir)
    prefix = layer_prefix_in_files([e.name for e in entries], module_prefix)
    new_index = {old: new for new, old in enumerate(keep)}
    kept: list[tuple[str, TensorEntry]] = []
    for entry in entries:
        name = rename_key(entry.name, prefix, new_index)
        if name is not None:
            kept.append((name, entry))
    metadata.setdefault("format", "pt")

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(out_dir.glob("*.safetensors")) + [out_dir / WEIGHTS_INDEX_NAME]:
        stale.unlink(missing_ok=True)
    shards = _plan_shards(kept, max_shard_bytes)
    total = sum(e.nbytes for _, e in kept)
    done = [0]
    names = (
        [WEIGHTS_NAME] if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for fname, items in zip(names, shards, strict=True):
        _write_shard(out_dir / fname, items, metadata, hooks, done, total)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {n: fname for fname, items in zip(names, shards, strict=True) for n, _ in items}}
        (out_dir / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    cut_layer_config(config, keep)
    config.save_pretrained(out_dir)
    copied = _copy_side_files(src_dir, out_dir)
    return {
        "keep": keep,
        "removed": sorted(set(removed)),
        "num_layers_before": num_layers,
        "num_layers_after": len(keep),
        "params_before": params_before,
        "params_after": params_before - params_removed,
        "weight_files": names,
        "bytes_written": total,
        "copied_files": copied,
    }
