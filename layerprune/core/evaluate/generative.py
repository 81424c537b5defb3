"""Generative and last-word tasks, as data: lm-evaluation-harness 0.4 prompts, shots, stops, filters.

Each :class:`GenTask` mirrors one stock task yaml of lm-eval 0.4.13 (``lm_eval/tasks/...``; its
``metadata.version`` is kept in ``version``). Prompts are built as lm-eval's
``ConfigurableTask.fewshot_context`` builds them: an optional system turn (the description), one
user turn (``doc_to_text`` + ``target_delimiter``) and one assistant turn (the target +
``fewshot_delimiter``) per example, then the document's user turn. As plain text the turns are
concatenated; with ``apply_chat_template`` they are rendered by the tokenizer's chat template with
the examples as separate turns (lm-eval's default ``fewshot_as_multiturn`` when a chat template is
applied) and the generation prompt added.

Scores (``ConfigurableTask.process_results`` + the task's ``filter_list``): each filter pipeline
turns the generated text into an answer, which is scored with ``exact_match`` and the task's
normalisation (filters.py); per task the mean and ``sample_stddev / sqrt(n)``. Result keys are
lm-eval's ``metric,filter`` keys with ``,none`` dropped (as the multiple-choice tasks' ``acc``).
LAMBADA is a ``loglikelihood`` task: ``acc`` (greedy decoding yields the last word) and
``perplexity`` = ``exp(-mean log-likelihood)`` of the last word; lm-eval's perplexity standard
error is a 100k-sample bootstrap, not reproduced (``None``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from layerprune.core.errors import SpecError
from layerprune.core.evaluate import filters as F
from layerprune.core.evaluate.generative_data import load_generative_docs, load_gsm8k_train
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.spec import GENERATIVE_TASKS

# Task definitions are data and torch-free (the API reads them): the generation engine
# (generate.py, torch) is imported where a model runs.
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default

Doc = dict[str, Any]
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


@dataclass(frozen=True)
class FilterDef:
    name: str  # lm-eval's filter name, the part after the comma in its result keys
    extract: Callable[[str], str]


@dataclass(frozen=True)
class GenTask:
    name: str
    source: str  # generative_data key
    lm_eval_yaml: str  # relative to lm_eval/tasks
    version: float
    output_type: str  # "generate_until" | "loglikelihood"
    doc_to_text: Callable[[Doc], str]
    doc_to_target: Callable[[Doc], Any]  # str, or a list of acceptable answers
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    fewshot_samples: tuple[Doc, ...] = ()  # fixed examples, in order (lm-eval's first_n sampler)
    fewshot_from_train: bool = False  # drawn at random from the train split (lm-eval's default sampler)
    until: tuple[str, ...] = ()
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    filters: tuple[FilterDef, ...] = ()
    match_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, bool]:
        """Result key → higher is better (lm-eval's ``higher_is_better``)."""
        if self.output_type == "loglikelihood":
            return {"acc": True, "perplexity": False}
        return {metric_key("exact_match", f.name): True for f in self.filters}


def metric_key(metric: str, filter_name: str) -> str:
    return metric if filter_name == "none" else f"{metric},{filter_name}"


def stderr_key(key: str) -> str:
    metric, _, filt = key.partition(",")
    return f"{metric}_stderr" + (f",{filt}" if filt else "")


# ---------------------------------------------------------------------------------------------
# GSM8K (gsm8k/gsm8k.yaml, gsm8k/gsm8k-cot.yaml, version 3.0)

_GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
_GSM8K_MATCH = {"regexes_to_ignore": _GSM8K_IGNORE, "ignore_case": True, "ignore_punctuation": False}
_FLEXIBLE = FilterDef("flexible-extract", lambda t: F.regex_extract(t, r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1))

# The eight chain-of-thought exemplars of gsm8k-cot.yaml (Wei et al. 2022), in its order.
GSM8K_COT_SHOTS: tuple[Doc, ...] = tuple({"question": q, "target": t} for q, t in (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
))


def _cot_target(doc: Doc) -> str:
    # '{{answer.split('####')[-1].strip() if answer is defined else target}}'
    return doc["answer"].split("####")[-1].strip() if "answer" in doc else doc["target"]


# ---------------------------------------------------------------------------------------------
# LAMBADA (lambada/lambada_openai.yaml, version 1.0): the passage without its last word, then it.

def _lambada_text(doc: Doc) -> str:
    return " ".join(doc["text"].split(" ")[:-1])


def _lambada_target(doc: Doc) -> str:
    return " " + doc["text"].split(" ")[-1]


_STRIP = FilterDef("remove_whitespace", F.strip_whitespace)
_QA_UNTIL = ("\n", ".", ",")

GEN_TASKS: dict[str, GenTask] = {
    "gsm8k": GenTask(
        "gsm8k", "gsm8k", "gsm8k/gsm8k.yaml", 3.0, "generate_until",
        doc_to_text=lambda d: f"Question: {d['question']}\nAnswer:",
        doc_to_target=lambda d: d["answer"],
        num_fewshot=5, fewshot_from_train=True,
        until=("Question:", "</s>", "<|im_end|>"),
        filters=(FilterDef("strict-match", lambda t: F.regex_extract(t, r"#### (\-?[0-9\.\,]+)")), _FLEXIBLE),
        match_kwargs=_GSM8K_MATCH,
    ),
    "gsm8k_cot": GenTask(
        "gsm8k_cot", "gsm8k", "gsm8k/gsm8k-cot.yaml", 3.0, "generate_until",
        doc_to_text=lambda d: f"Q: {d['question']}\nA:",
        doc_to_target=_cot_target,
        num_fewshot=8, fewshot_samples=GSM8K_COT_SHOTS,
        until=("Q:", "</s>", "<|im_end|>"),
        filters=(FilterDef("strict-match", lambda t: F.regex_extract(t, r"The answer is (\-?[0-9\.\,]+).")),
                 _FLEXIBLE),
        match_kwargs=_GSM8K_MATCH,
    ),
    "lambada_openai": GenTask(
        "lambada_openai", "lambada_openai", "lambada/lambada_openai.yaml", 1.0, "loglikelihood",
        doc_to_text=_lambada_text, doc_to_target=_lambada_target,
    ),
    "triviaqa": GenTask(
        "triviaqa", "triviaqa", "triviaqa/default.yaml", 3.0, "generate_until",
        doc_to_text=lambda d: f"Question: {d['question']}?\nAnswer:",
        doc_to_target=lambda d: list(d["answer"]["aliases"]),
        until=_QA_UNTIL, filters=(_STRIP,),
        match_kwargs={"ignore_case": True, "ignore_punctuation": True},
    ),
    "nq_open": GenTask(
        "nq_open", "nq_open", "nq_open/nq_open.yaml", 4.0, "generate_until",
        doc_to_text=lambda d: f"Q: {d['question']}?\nA:",
        doc_to_target=lambda d: list(d["answer"]),
        description="Answer these questions:\n\n", fewshot_delimiter="\n",
        until=_QA_UNTIL, filters=(_STRIP,),
        match_kwargs={"ignore_case": True, "ignore_punctuation": True,
                      "regexes_to_ignore": ("\\b(?:The |the |An |A |The |a |an )",)},
    ),
}
# The names are the spec's (core/spec.py, one source); each must have a definition here.
GEN_TASK_NAMES: tuple[str, ...] = GENERATIVE_TASKS
if set(GEN_TASKS) != set(GEN_TASK_NAMES):  # pragma: no cover - a task named but not defined, or the reverse
    raise RuntimeError(f"generative tasks defined {sorted(GEN_TASKS)} differ from the spec's {sorted(GEN_TASK_NAMES)}")


# ---------------------------------------------------------------------------------------------
# Prompts


def _turns(task: GenTask, doc: Doc, shots: list[Doc]) -> list[tuple[str, str, str]]:
    """(role, content, plain-text delimiter) of each turn, as lm-eval's ``build_qa_turn`` makes them."""
    turns: list[tuple[str, str, str]] = []
    if task.description:
        turns.append(("system", task.description, ""))
    for shot in shots:
        target = task.doc_to_target(shot)
        if isinstance(target, list):
            target = target[0]
        turns.append(("user", task.doc_to_text(shot), task.target_delimiter))
        turns.append(("assistant", target, task.fewshot_delimiter))
    turns.append(("user", task.doc_to_text(doc), ""))
    return turns


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """lm-eval's ``HFLM.apply_chat_template`` with a generation prompt (system turns dropped if refused)."""
    import jinja2  # noqa: PLC0415 - keeps jinja2 (~0.3 s) out of the API

    kwargs = {"tokenize": False, "add_generation_prompt": True, "continue_final_message": False}
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except jinja2.exceptions.TemplateError:
        return tokenizer.apply_chat_template([m for m in messages if m["role"] != "system"], **kwargs)


def build_context(task: GenTask, doc: Doc, shots: list[Doc], *, tokenizer: Any = None,
                  apply_chat_template: bool = False) -> str:
    turns = _turns(task, doc, shots)
    if apply_chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise SpecError("apply_chat_template: the model's tokenizer has no chat template",
                            param="evaluate.apply_chat_template")
        return render_chat(tokenizer, [{"role": r, "content": c} for r, c, _ in turns])
    return "".join(c + d for _, c, d in turns)


def fewshot_examples(task: GenTask, n_docs: int, train: list[Doc] | None) -> list[list[Doc]]:
    """The examples of each of the first ``n_docs`` documents, drawn in document order as lm-eval draws them."""
    if task.num_fewshot == 0:
        return [[] for _ in range(n_docs)]
    if not task.fewshot_from_train:
        return [list(task.fewshot_samples[: task.num_fewshot]) for _ in range(n_docs)]
    assert train is not None
    rnd = random.Random(FEWSHOT_SEED)  # ContextSampler: one generator per task, seeded once
    return [rnd.sample(train, task.num_fewshot) for _ in range(n_docs)]


# ---------------------------------------------------------------------------------------------
# Running and scoring


def _mean_stderr(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def score_generations(task: GenTask, docs: list[Doc], generations: list[str]) -> dict[str, Any]:
    """Filters, exact match and aggregation of one task's generations (lm-eval's result figures)."""
    out: dict[str, Any] = {}
    for filt in task.filters:
        key = metric_key("exact_match", filt.name)
        values = []
        for doc, text in zip(docs, generations, strict=True):
            target = task.doc_to_target(doc)
            refs = target if isinstance(target, list) else [str(target)]
            values.append(F.exact_match(filt.extract(text), refs, **task.match_kwargs))
        out[key] = sum(values) / len(values) if values else None
        out[stderr_key(key)] = _mean_stderr(values)
    out["n"] = len(docs)
    return out


def score_last_word(results: list[tuple[float, bool]]) -> dict[str, Any]:
    accs = [1.0 if greedy else 0.0 for _, greedy in results]
    lls = [ll for ll, _ in results]
    return {
        "acc": sum(accs) / len(accs) if accs else None,
        "acc_stderr": _mean_stderr(accs),
        "perplexity": math.exp(-sum(lls) / len(lls)) if lls else None,
        "perplexity_stderr": None,
        "n": len(results),
    }


def check_generative_names(names: list[str], gsm8k_train: str | None) -> None:
    for name in names:
        if name not in GEN_TASKS:
            raise SpecError(f"unknown generative task '{name}'", param="evaluate.tasks")
    if gsm8k_train is not None and "gsm8k" not in names:
        raise SpecError("gsm8k_train is only used by task 'gsm8k'", param="evaluate.gsm8k_train")


def run_generative_tasks(
    model: Any,
    tokenizer: Any,
    names: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    apply_chat_template: bool = False,
    gsm8k_train: str | None = None,
    gsm8k_param: str = "evaluate.tasks",
    hooks: Hooks = NO_HOOKS,
    keep_generations: bool = False,
) -> dict[str, dict[str, Any]]:
    """Scores of each named generative/last-word task on its first ``limit`` documents.

    Generation requests of all tasks that share stop strings and a token budget are pooled and
    batched together (as lm-eval groups them by generation arguments).
    """
    from layerprune.core.evaluate.continuation import loglik_and_greedy  # noqa: PLC0415 - keeps torch out of the API
    from layerprune.core.evaluate.generate import greedy_until, unsupported_processors  # noqa: PLC0415 - known cycle; keeps torch out of the API
    from layerprune.core.evaluate.loglik import encode_pair, model_max_length  # noqa: PLC0415 - keeps torch out of the API

    check_generative_names(names, gsm8k_train)
    ignored = unsupported_processors(model)
    if ignored:
        hooks.warn("generation is plain greedy argmax; the model's generation_config also asks for "
                   + ", ".join(ignored) + ", which is not applied", fields=ignored)
    train = None
    if "gsm8k" in names:
        train = load_gsm8k_train(gsm8k_train, "evaluate.gsm8k_train" if gsm8k_train is not None else gsm8k_param)
    max_length = model_max_length(model.config, tokenizer)
    docs_of: dict[str, list[Doc]] = {}
    contexts_of: dict[str, list[str]] = {}
    for name in names:
        task = GEN_TASKS[name]
        docs = load_generative_docs(task.source, limit)
        shots = fewshot_examples(task, len(docs), train)
        docs_of[name] = docs
        contexts_of[name] = [build_context(task, d, s, tokenizer=tokenizer, apply_chat_template=apply_chat_template)
                             for d, s in zip(docs, shots, strict=True)]
    results: dict[str, dict[str, Any]] = {}
    pools: dict[tuple[tuple[str, ...], int], list[str]] = {}
    for name in names:
        task = GEN_TASKS[name]
        if task.output_type == "generate_until":
            pools.setdefault((task.until, task.max_gen_toks), []).append(name)
    total = sum(len(contexts_of[n]) for group in pools.values() for n in group)
    done = 0
    for (until, max_gen_toks), group in pools.items():
        contexts = [c for n in group for c in contexts_of[n]]
        hooks.detail({"task": "+".join(group)})  # pooled: one count for the tasks of this pool
        texts = greedy_until(model, tokenizer, contexts, until, max_gen_toks=max_gen_toks, batch_size=batch_size,
                             max_length=max_length, hooks=hooks, done_before=done, total=total)
        done += len(contexts)
        start = 0
        for name in group:
            n = len(contexts_of[name])
            results[name] = score_generations(GEN_TASKS[name], docs_of[name], texts[start:start + n])
            if keep_generations:
                results[name]["generations"] = texts[start:start + n]
            start += n
    for name in names:
        task = GEN_TASKS[name]
        if task.output_type != "loglikelihood":
            continue
        hooks.detail({"task": name})
        requests = [encode_pair(tokenizer, ctx, task.doc_to_target(doc))
                    for ctx, doc in zip(contexts_of[name], docs_of[name], strict=True)]
        results[name] = score_last_word(loglik_and_greedy(model, requests, batch_size=batch_size,
                                                          max_length=max_length, hooks=hooks))
    for name in names:
        results[name]["higher_is_better"] = GEN_TASKS[name].metrics
    return {name: results[name] for name in names}
