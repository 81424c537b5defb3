"""layerprune's prompts and scores equal lm-evaluation-harness 0.4.13's, from the raw data files.

Nothing here hands lm-eval layerprune's documents. lm-eval builds every task from its own stock
registry (TaskManager: the task yaml, Jinja templates, ``!function`` hooks, ``process_docs``,
metrics) and reads the raw offline files through ``datasets.load_dataset``; only the data location
is redirected (tests/lm_eval_raw.py). Three splits ship only inside OLMES request files (ARC and
OpenBookQA test, the titled SuperGLUE BoolQ): tests/lm_eval_raw.py turns those back into the row
schema of lm-eval's data set with its own few lines of string slicing (not layerprune's loader), and
``test_converted_rows_render_to_the_olmes_contexts`` shows that lm-eval's template applied to the
converted rows gives back the contexts OLMES rendered from the original data set, character for
character. So if layerprune read different documents (BoolQ without titles: 0.32 instead of 0.38 on
100 documents), different splits, or rendered a prompt differently, these tests fail.

1. Every document of every task (no model): lm-eval's requests (context, continuation) and gold
   index equal layerprune's, exactly.
2. The bundled model (fp32, CPU) on a slice of every task and the first document of each of the
   57 MMLU subjects: acc, acc_norm and their standard errors equal lm-eval's exactly (``==``), per
   task, per MMLU subject, per MMLU category and for MMLU as a whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from layerprune.core.evaluate.loaders import load_docs  # noqa: E402
from layerprune.core.evaluate.tasks import GROUPS, MMLU_CATEGORIES, MMLU_SUBJECTS, TASKS, build_requests  # noqa: E402
from tests import lm_eval_raw  # noqa: E402

# lm-eval's stock name for each layerprune task (the same names; see the README's task table).
STOCK = {"arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "piqa": "piqa", "hellaswag": "hellaswag",
         "openbookqa": "openbookqa", "winogrande": "winogrande", "boolq": "boolq", "mmlu": "mmlu"}


@pytest.fixture(scope="module")
def tm():
    return lm_eval_raw.stock_task_manager(list(STOCK.values()))


def test_the_reference_side_never_reads_layerprune() -> None:
    # What lm-eval is given must not come from the code under test, or the check agrees by construction.
    import ast

    tree = ast.parse(Path(lm_eval_raw.__file__).read_text(encoding="utf-8"))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "layerprune"]


@pytest.fixture
def fast_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval import utils

    monkeypatch.setattr(utils.env, "from_string", lm_eval_raw.memoized_from_string(utils.env))


@pytest.mark.parametrize("name", list(STOCK))
def test_every_prompt_equals_lm_eval(name: str, tm, tmp_path: Path, fast_templates) -> None:
    built = lm_eval_raw.build_stock(tm, STOCK[name], tmp_path)
    leaves = built.get_all_tasks() if hasattr(built, "get_all_tasks") else [built]
    assert [t.task_name for t in leaves] == list(GROUPS.get(name, (name,)))
    for task in leaves:
        theirs = lm_eval_raw.lm_eval_requests(task)
        ours = load_docs(TASKS[task.task_name])
        assert len(ours) == len(theirs) > 0, task.task_name
        for doc, rec in zip(ours, theirs, strict=True):
            r = build_requests(TASKS[task.task_name], doc)
            assert (r.pairs, r.gold) == (rec["arguments"], rec["gold"]), (task.task_name, rec["doc_id"])


def test_converted_rows_render_to_the_olmes_contexts(tm, tmp_path: Path, fast_templates) -> None:
    # BoolQ: OLMES rendered super_glue's rows with lm-eval's own template, zero-shot.
    task = lm_eval_raw.build_stock(tm, "boolq", tmp_path)
    olmes = {}
    for r in lm_eval_raw.olmes_requests("boolq", "rc_0shot"):
        olmes.setdefault(r["doc_id"], set()).add((r["request"]["context"], r["request"]["continuation"]))
    theirs = lm_eval_raw.lm_eval_requests(task)
    assert len(theirs) == len(olmes) == 3270
    for rec in theirs:
        assert set(rec["arguments"]) == olmes[rec["doc_id"]]
    assert theirs[0]["arguments"][0][0].startswith("Ethanol fuel -- All biomass goes through")
    # ARC and OpenBookQA test: OLMES's 5-shot contexts end with the document's own zero-shot
    # prompt ("Question: ...\nAnswer:"; lm-eval's OpenBookQA prompt is the bare question stem).
    for name, wrap in (("arc_easy", "{}"), ("arc_challenge", "{}"), ("openbookqa", "Question: {}\nAnswer:")):
        task = lm_eval_raw.build_stock(tm, name, tmp_path)
        olmes = {}
        for r in lm_eval_raw.olmes_requests(name, "test_rc_5shot"):
            if r["doc_id"] < 1_000_000:
                olmes.setdefault(r["doc_id"], []).append((r["request"]["context"], r["request"]["continuation"]))
        theirs = lm_eval_raw.lm_eval_requests(task)
        assert len(theirs) == len(olmes), name
        for rec in theirs:
            pairs = olmes[rec["doc_id"]]
            assert [c for _, c in pairs] == [c for _, c in rec["arguments"]], (name, rec["doc_id"])
            for (ctx, _), (their_ctx, _) in zip(pairs, rec["arguments"], strict=True):
                assert ctx.endswith("\n\n" + wrap.format(their_ctx)), (name, rec["doc_id"])


# Small but real: every task, MMLU with the first document of each of its 57 subjects (MMLU's long
# contexts dominate the cost; with one document a subject has no standard error, on either side,
# and the pooled one is checked against lm-eval's function in tests/core/evaluate/test_tasks.py).
LIMITS = {"arc_easy": 8, "arc_challenge": 8, "piqa": 8, "hellaswag": 6, "openbookqa": 8, "winogrande": 8,
          "boolq": 4, "mmlu": 1}


@pytest.fixture(scope="module")
def scored(bundled_dir: Path, tm, tmp_path_factory: pytest.TempPathFactory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.core.evaluate.multiple_choice import run_tasks

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()
    ours: dict[str, dict] = {}
    for name, limit in LIMITS.items():
        ours.update(run_tasks(model, tokenizer, [name], limit=limit, batch_size=16))
    # WinoGrande's, BoolQ's and MMLU's yaml list only acc: lm-eval is asked for acc_norm too.
    overrides = {name: lm_eval_raw.ALSO_ACC_NORM for name in ("winogrande", "boolq", "mmlu")}
    theirs = lm_eval_raw.run_lm_eval(model, tokenizer, {STOCK[n]: k for n, k in LIMITS.items()},
                                     workdir=tmp_path_factory.mktemp("lm_eval"), task_manager=tm,
                                     overrides=overrides)
    return ours, theirs


def _same(ours: dict, theirs: dict, metrics: tuple[str, ...], where: str) -> None:
    expected = lm_eval_raw.metrics(theirs, metrics)
    got = {k: ours[k] for k in expected}
    assert got == expected, where


@pytest.mark.slow
def test_identical_metrics_to_lm_eval(scored) -> None:
    ours, theirs = scored
    results, samples = theirs["results"], theirs["samples"]
    for name, limit in LIMITS.items():
        assert ours[name]["n"] == limit * len(GROUPS.get(name, (name,)))
        if name == "mmlu":
            continue
        assert [s["doc_id"] for s in samples[STOCK[name]]] == list(range(limit))
        _same(ours[name], results[STOCK[name]], ("acc", "acc_norm"), name)
    for subject in MMLU_SUBJECTS:
        _same(ours["mmlu"]["subtasks"][subject], results[f"mmlu_{subject}"], ("acc", "acc_norm"), subject)
    # lm-eval's MMLU groups aggregate acc only (size-weighted mean, pooled standard error).
    for category in MMLU_CATEGORIES:
        _same(ours["mmlu"]["categories"][category], results[f"mmlu_{category}"], ("acc",), category)
    _same(ours["mmlu"], results["mmlu"], ("acc",), "mmlu")
    # A model at chance everywhere would make this test weak; ARC-Easy is well above it.
    assert ours["arc_easy"]["acc"] >= 0.4
