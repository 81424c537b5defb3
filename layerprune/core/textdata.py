"""Resolve a data set reference to rows or texts, from wherever it lives.

A reference is one of:
* ``bundled:<name>``: a bundled set (:mod:`layerprune.core.bundled`);
* a local path: ``.jsonl`` (one JSON object a line), ``.json`` (a list of objects) or plain
  text (``.txt`` and anything else: paragraphs separated by blank lines);
* a Hugging Face data set id ``owner/name`` (optionally ``owner/name:config``), read with the
  ``datasets`` library when the machine is online. Offline it fails at once with a clear
  message instead of hanging on retries.

The worker turns uploaded ``file_…`` ids into local paths before core sees them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layerprune.core import bundled, refs
from layerprune.core.errors import DatasetError

TEXT_FIELDS = ("text", "content", "passage", "document")


def is_hub_id(ref: str) -> bool:
    return (
        not ref.startswith((refs.BUNDLED_PREFIX, "/", ".", "~", refs.FILE_PREFIX))
        and ref.count("/") == 1
        and not os.path.exists(ref)
    )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("", "0", "false", "False")


def read_jsonl(path: Path, *, param: str | None = None) -> list[dict[str, Any]]:
    """Objects of a JSONL file; a bad line is a DatasetError naming its line number."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8-sig") as fh:  # a byte-order mark is not part of line 1
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path.name} line {lineno}: not valid JSON ({exc.msg})", param=param) from exc
            except RecursionError:  # not a ValueError: nesting deeper than the interpreter allows
                raise DatasetError(f"{path.name} line {lineno}: JSON nested too deeply", param=param) from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path.name} line {lineno}: expected a JSON object", param=param)
            rows.append(obj)
    return rows


def _split_paragraphs(text: str) -> list[str]:
    paras = [" ".join(p.split()) for p in text.replace("\r\n", "\n").split("\n\n")]
    return [p for p in paras if p]


def load_rows(ref: str, *, param: str | None = None, split: str = "train") -> list[dict[str, Any]]:
    """Rows (dicts) of a data set reference. Plain text gives ``{"text": paragraph}`` rows."""
    if refs.is_bundled(ref):
        name = refs.bundled_name(ref)
        if name in bundled.INSTRUCTION_SETS:
            return bundled.bundled_instructions(ref)  # type: ignore[return-value]
        try:
            return [{"text": t} for t in bundled.bundled_text(ref)]
        except DatasetError as exc:
            raise DatasetError(exc.message, param=param) from exc
    path = Path(os.path.expanduser(ref))
    if path.exists():
        if path.is_dir():
            raise DatasetError(f"{ref} is a directory, expected a file", param=param)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = read_jsonl(path, param=param)
        elif suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path.name}: not valid JSON ({exc.msg})", param=param) from exc
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise DatasetError(f"{path.name}: expected a JSON list of objects", param=param)
            rows = data
        else:
            try:
                rows = [{"text": p} for p in _split_paragraphs(path.read_text(encoding="utf-8"))]
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path.name}: not UTF-8 text", param=param) from exc
        if not rows:
            raise DatasetError(f"{path.name} holds no records", param=param)
        return rows
    if is_hub_id(ref.split(":")[0]):
        return _load_hub(ref, param=param, split=split)
    raise DatasetError(f"data set '{ref}' not found (bundled:<name>, an uploaded file, a path or a hub id)", param=param)


def _load_hub(ref: str, *, param: str | None, split: str) -> list[dict[str, Any]]:
    name, _, config = ref.partition(":")
    if hub_offline():
        raise DatasetError(f"data set '{ref}' is on the Hugging Face hub and this machine is offline", param=param)
    try:
        import datasets  # noqa: PLC0415 - optional, heavy
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatasetError("reading hub data sets needs the 'datasets' package", param=param) from exc
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; the user needs the message
        raise DatasetError(f"could not load data set '{ref}' from the hub: {exc}", param=param) from exc
    return [dict(r) for r in ds]


def load_texts(ref: str, *, param: str | None = None, split: str = "train") -> list[str]:
    """Texts of a data set reference: the ``text`` field (or a similar one) of each row."""
    rows = load_rows(ref, param=param, split=split)
    field = text_field(rows[0])
    if field is None:
        raise DatasetError(f"rows of '{ref}' have no text field (one of {', '.join(TEXT_FIELDS)})", param=param)
    texts = [str(r.get(field) or "") for r in rows]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DatasetError(f"data set '{ref}' has no text", param=param)
    return texts


def text_field(first_row: dict[str, Any]) -> str | None:
    """The field :func:`load_texts` reads every row's text from: the first of ``TEXT_FIELDS``
    that the first row has (torch-free: the API checks uploads with it)."""
    return next((f for f in TEXT_FIELDS if f in first_row), None)


def token_windows(texts: list[str], tokenizer: Any, seq_len: int, num: int | None, seed: int | None = None):  # type: ignore[no-untyped-def]
    """``num`` windows of ``seq_len`` tokens from the concatenated texts (a [num, seq_len] LongTensor).

    With a seed the windows start at random offsets (the paper's calibration: random windows of
    128 tokens); without one they are consecutive and non-overlapping. No BOS is added: the
    bundled tokenizer's file says not to, and windows cut mid-text have no beginning anyway.
    """
    import torch  # noqa: PLC0415 - keeps torch out of the API

    sep = tokenizer.eos_token or "\n\n"
    ids: list[int] = tokenizer(sep.join(texts), add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len:
        raise DatasetError(f"the text holds {len(ids)} tokens, fewer than seq_len {seq_len}")
    max_windows = len(ids) // seq_len
    if seed is None:
        n = max_windows if num is None else min(num, max_windows)
        starts = [i * seq_len for i in range(n)]
    else:
        g = torch.Generator().manual_seed(seed)
        n = max_windows if num is None else num
        starts = torch.randint(0, len(ids) - seq_len + 1, (n,), generator=g).tolist()
    t = torch.tensor(ids, dtype=torch.long)
    return torch.stack([t[s : s + seq_len] for s in starts])
