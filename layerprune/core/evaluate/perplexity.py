"""Perplexity: exp(mean token NLL) over non-overlapping windows of ``seq_len`` tokens.

The text is tokenized once without special tokens and cut into consecutive windows of
``seq_len`` tokens (a last, shorter remainder is dropped; ``max_windows`` keeps the first ones).
Within a window the first token has no context, so ``seq_len - 1`` tokens are scored.

BOS: the bundled SmolLM2 tokenizer says ``add_bos_token: false`` and gets no BOS. A tokenizer that
does add one (``tokenizer("x")`` starts with ``bos_token_id``) gets it prepended to every window
as unscored context, since that is the input such a model was trained on; then all ``seq_len``
tokens of the window are scored. The result records which was done (``bos``).

Text sources: ``bundled:<name>`` paragraphs (joined by blank lines), a local file (plain text,
e.g. WikiText's ``wiki.test.raw``, read exactly as written; ``.jsonl`` / ``.json`` rows; or a
WikiText ``.parquet``), or a Hugging Face data set id (its ``test`` split) when online. Rows in WikiText's line-per-row layout are concatenated as they are, which
restores the original text; other rows' texts are joined by blank lines.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from layerprune.core import refs, textdata
from layerprune.core.errors import DatasetError, SpecError
from layerprune.core.evaluate.loaders import is_wikitext_rows, read_wikitext
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.spec import PerplexitySpec

PARAM = "evaluate.perplexity.dataset"


def load_perplexity_text(ref: str, *, param: str = PARAM) -> str:
    """The text a perplexity is measured on, from any supported reference."""
    path = Path(os.path.expanduser(ref))
    if not refs.is_bundled(ref) and path.suffix.lower() == ".parquet":
        return read_wikitext(path, param=param)
    if not refs.is_bundled(ref) and path.is_file() and path.suffix.lower() not in (".json", ".jsonl"):
        # Plain text (e.g. WikiText's wiki.test.raw) is measured exactly as written.
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path.name}: not UTF-8 text", param=param) from exc
        if not text.strip():
            raise DatasetError(f"{path.name} holds no text", param=param)
        return text
    rows = textdata.load_rows(ref, param=param, split="test")
    if is_wikitext_rows(rows):
        return "".join(r["text"] for r in rows)
    field = next((f for f in textdata.TEXT_FIELDS if f in rows[0]), None)
    if field is None:
        raise DatasetError(
            f"rows of '{ref}' have no text field (one of {', '.join(textdata.TEXT_FIELDS)})", param=param
        )
    texts = []
    for i, r in enumerate(rows, start=1):
        value = r.get(field)
        if value is not None and not isinstance(value, str):
            raise DatasetError(f"record {i} of '{ref}': '{field}' is not a string", param=param)
        if value and value.strip():
            texts.append(value)
    if not texts:
        raise DatasetError(f"data set '{ref}' has no text", param=param)
    return "\n\n".join(texts)


def adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == bos


@torch.inference_mode()
def perplexity(
    model: Any,
    tokenizer: Any,
    spec: PerplexitySpec,
    *,
    batch_size: int = 8,
    hooks: Hooks = NO_HOOKS,
    text: str | None = None,
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``spec.dataset`` (or on ``text`` when given)."""
    if spec.seq_len < 2:
        raise SpecError("seq_len must be at least 2", param="evaluate.perplexity.seq_len")
    if text is None:
        text = load_perplexity_text(spec.dataset)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // spec.seq_len
    if n == 0:
        raise DatasetError(
            f"the text holds {len(ids)} tokens, fewer than seq_len {spec.seq_len}", param=PARAM
        )
    if spec.max_windows is not None:
        n = min(n, spec.max_windows)
    bos = adds_bos(tokenizer)
    windows = torch.tensor(ids[: n * spec.seq_len], dtype=torch.long).view(n, spec.seq_len)
    if bos:
        windows = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long), windows], dim=1)
    device = next(model.parameters()).device
    nll = 0.0
    count = 0
    for start in range(0, n, batch_size):
        hooks.check()
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits
        for i in range(batch.shape[0]):
            # One row at a time keeps the fp32 copy of the logits small for long windows.
            nll += float(
                torch.nn.functional.cross_entropy(logits[i, :-1].float(), batch[i, 1:], reduction="sum")
            )
        count += batch.shape[0] * (batch.shape[1] - 1)
        hooks.progress(min(start + batch_size, n), n, "perplexity")
    return {
        "dataset": spec.dataset,
        "seq_len": spec.seq_len,
        "num_windows": n,
        "num_tokens": count,
        "bos": bos,
        "value": math.exp(nll / count),
    }
