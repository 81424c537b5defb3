"""The zero-shot multiple-choice tasks, as data: lm-evaluation-harness 0.4 prompts, choices and targets.

Each :class:`TaskDef` mirrors one task yaml of lm-evaluation-harness 0.4 (``lm_eval/tasks/...``):
``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` / ``target_delimiter`` / split and the
``process_docs`` preprocessing, written as small functions of a raw document (the Jinja templates
rendered by hand). The documents are the raw Hugging Face rows of each data set (see loaders.py).

Requests follow lm-eval's ``ConfigurableTask.construct_requests`` for zero-shot: the context is
``description + doc_to_text(doc)`` and each choice is scored as the continuation
``target_delimiter + choice``. WinoGrande is a "multiple input" task (partial scoring): the choices
are the *contexts* (the sentence up to the blank, filled with each option) and the shared
continuation is the rest of the sentence; the gold index comes from ``doc_to_text``.
``acc_norm`` divides each log-likelihood by the character length of ``doc_to_choice``'s strings,
which for WinoGrande are the contexts, exactly as lm-eval does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from layerprune.core.spec import MULTIPLE_CHOICE_TASKS

Doc = dict[str, Any]


@dataclass(frozen=True)
class TaskDef:
    name: str
    source: str  # loader key (loaders.load_docs): where the raw documents come from
    split: str  # the split lm-eval scores
    doc_to_text: Callable[[Doc], Any]  # str, or the gold index for multiple-input tasks
    doc_to_choice: Callable[[Doc], list[str]]
    doc_to_target: Callable[[Doc], Any]  # gold index, or the shared continuation (multiple input)
    target_delimiter: str = " "
    multiple_input: bool = False
    description: str = ""
    process_doc: Callable[[Doc], Doc] | None = None
    # lm-eval's own metric list for the task; we always compute acc and acc_norm (for the
    # tasks whose yaml lists only acc, acc_norm is what lm-eval gives when it is asked for).
    lm_eval_metrics: tuple[str, ...] = ("acc", "acc_norm")
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# ARC (lm_eval/tasks/arc/arc_easy.yaml): "Question: {{question}}\nAnswer:", choices.text,
# target choices.label.index(answerKey); test split.


def _arc_text(doc: Doc) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def _choices_text(doc: Doc) -> list[str]:
    return list(doc["choices"]["text"])


def _arc_target(doc: Doc) -> int:
    return list(doc["choices"]["label"]).index(doc["answerKey"])


# PIQA (piqa/piqa.yaml): "Question: {{goal}}\nAnswer:", [sol1, sol2], label.
def _piqa_text(doc: Doc) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def _piqa_choice(doc: Doc) -> list[str]:
    return [doc["sol1"], doc["sol2"]]


def _label(doc: Doc) -> int:
    return int(doc["label"])


# HellaSwag (hellaswag/hellaswag.yaml + utils.py): process_docs builds query/choices/gold.
def hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    # Brackets are artifacts of the WikiHow part of HellaSwag (lm-eval's comment).
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_process(doc: Doc) -> Doc:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


# OpenBookQA (openbookqa/openbookqa.yaml): the bare question_stem, no "Question:" prefix.
def _obqa_target(doc: Doc) -> int:
    return list(doc["choices"]["label"]).index(doc["answerKey"].lstrip())


# WinoGrande (winogrande/preprocess_winogrande.py): partial scoring.
def _wino_text(doc: Doc) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def _wino_target(doc: Doc) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def _wino_choice(doc: Doc) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


# BoolQ (super_glue/boolq/default.yaml): "{{passage}}\nQuestion: {{question}}?\nAnswer:", no/yes.
def _boolq_text(doc: Doc) -> str:
    return f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"


# MMLU (mmlu/default/_default_template_yaml), per subject with its description.
def _mmlu_text(doc: Doc) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def _mmlu_target(doc: Doc) -> int:
    return int(doc["answer"])


# lm-eval's grouping of the 57 subjects (the "tag" of each mmlu_<subject>.yaml).
MMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
        "high_school_physics", "high_school_statistics", "machine_learning",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
        "professional_accounting", "professional_medicine", "virology",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
        "sociology", "us_foreign_policy",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history",
        "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
        "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
        "world_religions",
    ),
}
MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(s for subs in MMLU_CATEGORIES.values() for s in subs))


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_subtask(subject: str) -> TaskDef:
    return TaskDef(
        name=f"mmlu_{subject}",
        source=f"mmlu/{subject}",
        split="test",
        doc_to_text=_mmlu_text,
        doc_to_choice=lambda doc: ["A", "B", "C", "D"],
        doc_to_target=_mmlu_target,
        description=mmlu_description(subject),
        lm_eval_metrics=("acc",),
        extra={"subject": subject},
    )


TASKS: dict[str, TaskDef] = {
    "arc_easy": TaskDef("arc_easy", "arc_easy", "test", _arc_text, _choices_text, _arc_target),
    "arc_challenge": TaskDef("arc_challenge", "arc_challenge", "test", _arc_text, _choices_text, _arc_target),
    "piqa": TaskDef("piqa", "piqa", "validation", _piqa_text, _piqa_choice, _label),
    "hellaswag": TaskDef(
        "hellaswag", "hellaswag", "validation",
        doc_to_text=lambda doc: doc["query"],
        doc_to_choice=lambda doc: list(doc["choices"]),
        doc_to_target=lambda doc: int(doc["label"]),
        process_doc=_hellaswag_process,
    ),
    "openbookqa": TaskDef(
        "openbookqa", "openbookqa", "test", lambda doc: doc["question_stem"], _choices_text, _obqa_target
    ),
    "winogrande": TaskDef(
        "winogrande", "winogrande", "validation", _wino_text, _wino_choice, _wino_target,
        multiple_input=True, lm_eval_metrics=("acc",),
    ),
    "boolq": TaskDef(
        "boolq", "boolq", "validation", _boolq_text, lambda doc: ["no", "yes"], _label, lm_eval_metrics=("acc",)
    ),
}
# In lm-eval's order (its mmlu group: stem, other, social sciences, humanities, each alphabetical),
# so that the size-weighted sums behind the group's figures add up in the same order, bit for bit.
GROUPS: dict[str, tuple[str, ...]] = {"mmlu": tuple(f"mmlu_{s}" for subs in MMLU_CATEGORIES.values() for s in subs)}
for _s in MMLU_SUBJECTS:
    TASKS[f"mmlu_{_s}"] = mmlu_subtask(_s)

# The names are the spec's (core/spec.py, one source); each must have a definition here.
TASK_NAMES: tuple[str, ...] = MULTIPLE_CHOICE_TASKS
for _name in TASK_NAMES:
    if _name not in TASKS and _name not in GROUPS:  # pragma: no cover - a task named but not defined
        raise RuntimeError(f"multiple-choice task '{_name}' has no definition in core/evaluate/tasks.py")


@dataclass(frozen=True)
class DocRequests:
    """The log-likelihood requests of one document: (context, continuation) pairs, one per choice."""

    pairs: list[tuple[str, str]]
    gold: int
    choice_lengths: list[float]  # characters of doc_to_choice's strings (acc_norm's divisor)


def build_requests(task: TaskDef, doc: Doc) -> DocRequests:
    """lm-eval's zero-shot fewshot_context + construct_requests for one (processed) document."""
    choices = task.doc_to_choice(doc)
    if task.multiple_input:
        cont = task.doc_to_target(doc)
        pairs = [(task.description + c, f"{task.target_delimiter}{cont}") for c in choices]
        gold = task.doc_to_text(doc)
    else:
        ctx = task.description + task.doc_to_text(doc)
        pairs = [(ctx, f"{task.target_delimiter}{c}") for c in choices]
        gold = task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -100
    elif gold >= len(choices):
        gold = -100
    return DocRequests(pairs=pairs, gold=int(gold), choice_lengths=[float(len(c)) for c in choices])
