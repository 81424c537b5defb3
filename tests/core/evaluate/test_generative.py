"""Generative tasks: generation against transformers' generate, filters against lm-eval's, data, spec, display."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from layerprune.core.errors import DatasetError, SpecError
from layerprune.core.evaluate import filters as F
from layerprune.core.evaluate.generate import cut_at_stops, greedy_until
from layerprune.core.evaluate.generative import GEN_TASKS, fewshot_examples, run_generative_tasks
from layerprune.core.evaluate.generative_data import load_generative_docs, load_gsm8k_train
from layerprune.core.spec import GENERATIVE_TASKS, EvaluateSpec, JobSpec

# --------------------------------------------------------------------------- generation


def _hf_greedy(model, tokenizer, context: str, n: int) -> list[int]:
    ids = torch.tensor([tokenizer.encode(context)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=2, eos_token_id=[], min_new_tokens=n)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "gemma2"])
def test_batched_cached_generation_equals_transformers_generate(tiny_dirs, family: str) -> None:
    """Left-padded batches with the KV cache give each row the tokens generate() gives it alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_dirs(family)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # random weights: let every row run its full budget
    tokenizer = AutoTokenizer.from_pretrained(d)
    contexts = ["The history of the city", "A", "Question: what is the capital of France?\nAnswer:",
                "one two three four five six seven eight nine ten eleven twelve"]
    ours = greedy_until(model, tokenizer, contexts, until=["\x00never"], max_gen_toks=12, batch_size=3)
    for ctx, text in zip(contexts, ours, strict=True):
        ref = tokenizer.decode(_hf_greedy(model, tokenizer, ctx, 12), skip_special_tokens=True)
        assert text == cut_at_stops(ref, ["\x00never", tokenizer.decode(tokenizer.eos_token_id)]), (family, ctx)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_shared_few_shot_prefix_runs_once_and_changes_nothing(tiny_dirs, family: str) -> None:
    """Contexts sharing a long prefix (few-shot examples): each row still gets generate()'s tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.core.evaluate import generate as G

    d = tiny_dirs(family)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(d)
    shots = "Q: There are 15 trees in the grove and workers plant more today.\nA: The answer is 6.\n\n" * 3
    contexts = [shots + q for q in ("Q: How many cars?\nA:", "Q: Leah had 32 chocolates and her sister 42?\nA:",
                                    "Q: x\nA:")]
    seqs = [tokenizer.encode(c) for c in contexts]
    assert G._common_prefix(seqs) >= G.MIN_SHARED_PREFIX  # the shared path is the one under test
    ours = greedy_until(model, tokenizer, contexts, until=["\x00never"], max_gen_toks=10, batch_size=3)
    for ctx, text in zip(contexts, ours, strict=True):
        ref = tokenizer.decode(_hf_greedy(model, tokenizer, ctx, 10), skip_special_tokens=True)
        assert text == cut_at_stops(ref, ["\x00never", tokenizer.decode(tokenizer.eos_token_id)]), (family, ctx)


def test_rows_stop_at_their_own_stop_string_and_text_is_cut(tiny_dirs) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_dirs("llama")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(d)
    contexts = ["The history of the city", "one two three"]
    full = [tokenizer.decode(_hf_greedy(model, tokenizer, c, 30), skip_special_tokens=True) for c in contexts]
    # A stop string taken from inside row 0's own continuation: row 0 is cut there, row 1 is not.
    stop = full[0][len(full[0]) // 2:len(full[0]) // 2 + 2]
    assert stop and stop not in full[1]
    ours = greedy_until(model, tokenizer, contexts, until=[stop], max_gen_toks=30, batch_size=2)
    assert ours[0] == full[0].split(stop)[0]
    assert ours[1] == full[1]


def test_generation_stops_at_eos_token(tiny_dirs) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_dirs("llama")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(d)
    model.generation_config.eos_token_id = None
    first = _hf_greedy(model, tokenizer, "The history", 12)
    # The first token that differs from all before it becomes the end of sequence: nothing after it
    # is generated or kept.
    k = next(i for i in range(1, len(first)) if first[i] not in first[:i])
    model.generation_config.eos_token_id = first[k]
    ours = greedy_until(model, tokenizer, ["The history"], until=[], max_gen_toks=12)
    expected = tokenizer.decode(first[:k + 1], skip_special_tokens=True)
    assert ours == [cut_at_stops(expected, [tokenizer.decode(tokenizer.eos_token_id)])]
    assert len(ours[0]) < len(tokenizer.decode(first, skip_special_tokens=True))


def test_cut_at_stops_is_lm_eval_postprocessing() -> None:
    from lm_eval.models.utils import postprocess_generated_text

    for text in ["The answer is 5.\n\nQ: next", "no stop here", "Q:A:Q:", ":Q", ""]:
        stops = ["Q:", "</s>", "<|im_end|>", ":"]
        assert cut_at_stops(text, stops) == postprocess_generated_text(text, stops, None)


# --------------------------------------------------------------------------- filters and metric


CASES = [
    "Janet makes 9 * 2 = $18 every day.\n#### 18", "The answer is 1,234.", "#### -3.50", "nothing numeric",
    "$1,000 and 27", "The answer is 42. Q:", "", "  Paris  ", "12.", "the The Beatles", "A, b; C!",
]


def test_filters_equal_lm_eval_filters() -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.filters.extraction import RegexFilter, WhitespaceFilter

    for task in ("gsm8k", "gsm8k_cot"):
        patterns = {
            "gsm8k": {"strict-match": (r"#### (\-?[0-9\.\,]+)", 0)},
            "gsm8k_cot": {"strict-match": (r"The answer is (\-?[0-9\.\,]+).", 0)},
        }[task]
        patterns["flexible-extract"] = (r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)
        for filt in GEN_TASKS[task].filters:
            pattern, group = patterns[filt.name]
            theirs = list(RegexFilter(regex_pattern=pattern, group_select=group).apply([[c] for c in CASES], []))
            assert [filt.extract(c) for c in CASES] == [t[0] for t in theirs], (task, filt.name)
    theirs = list(WhitespaceFilter().apply([[c] for c in CASES], []))
    assert [F.strip_whitespace(c) for c in CASES] == [t[0] for t in theirs]


def test_exact_match_equals_lm_eval_metric() -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate

    refs_sets = [["18"], ["1,234"], ["The Beatles", "Beatles"], ["paris"], ["A b C"], ["$1,000"]]
    for task in ("gsm8k", "triviaqa", "nq_open"):
        kwargs = GEN_TASKS[task].match_kwargs
        lm_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        for pred in CASES + ["18", "1234", "Beatles", "the beatles", "PARIS", "a b c", "1000"]:
            for refs in refs_sets:
                theirs = exact_match_hf_evaluate(predictions=[pred] * len(refs), references=refs, **lm_kwargs)
                expected = 1.0 if theirs["exact_match"] > 0 else 0.0
                assert F.exact_match(pred, refs, **kwargs) == expected, (task, pred, refs)


# --------------------------------------------------------------------------- data and shots


def test_bundled_documents_are_the_full_sets() -> None:
    assert len(load_generative_docs("gsm8k")) == 1319
    lam = load_generative_docs("lambada_openai")
    assert len(lam) == 5153
    assert all("  " not in d["text"] and "\n" not in d["text"] for d in lam)  # whitespace collapsed
    assert len(load_generative_docs("triviaqa")) == 7993  # rc.wikipedia.nocontext only
    assert len(load_generative_docs("nq_open")) == 3610
    first = load_generative_docs("gsm8k", 1)[0]
    assert set(first) == {"question", "answer"} and first["answer"].endswith("#### 18")


def test_gsm8k_train_file_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "train.jsonl"
    good.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a\n#### {i}"}) + "\n" for i in range(7)))
    rows = load_gsm8k_train(str(good), "evaluate.gsm8k_train")
    assert [r["question"] for r in rows] == [f"q{i}" for i in range(7)]
    shots = fewshot_examples(GEN_TASKS["gsm8k"], 3, rows)
    assert [len(s) for s in shots] == [5, 5, 5] and shots[0] != shots[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(DatasetError) as err:
        load_gsm8k_train(str(bad), "evaluate.gsm8k_train")
    assert err.value.param == "evaluate.gsm8k_train"
    with pytest.raises(DatasetError):
        load_gsm8k_train(str(tmp_path / "missing.jsonl"), "evaluate.gsm8k_train")


def test_stock_gsm8k_offline_without_train_split_is_a_spec_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpecError) as err:
        load_gsm8k_train(None, "evaluate.tasks[1]")
    assert err.value.param == "evaluate.tasks[1]" and "gsm8k_train" in str(err.value)


def test_unknown_generation_config_processors_are_warned(tiny_dirs) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_dirs("llama")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    model.generation_config.repetition_penalty = 1.3
    warnings: list[str] = []

    class Hooks:
        def check(self) -> None: ...
        def progress(self, *a, **k) -> None: ...
        def detail(self, *a, **k) -> None: ...
        def info(self, *a, **k) -> None: ...
        def warn(self, message: str, **data) -> None:
            warnings.append(message)

    run_generative_tasks(model, AutoTokenizer.from_pretrained(d), ["nq_open"], limit=1, hooks=Hooks())
    assert warnings and "repetition_penalty" in warnings[0]


# --------------------------------------------------------------------------- spec


def test_spec_task_names_match_the_task_table() -> None:
    assert GENERATIVE_TASKS == tuple(GEN_TASKS)


@pytest.mark.parametrize("evaluate, param", [
    ({"tasks": ["arc_easy", "gsm8k_cot"], "apply_chat_template": True}, "evaluate.tasks[0]"),
    ({"tasks": ["gsm8k_cot"], "gsm8k_train": "file_abc"}, "evaluate.gsm8k_train"),
])
def test_spec_refuses_options_that_do_not_apply(evaluate: dict, param: str) -> None:
    with pytest.raises(SpecError) as err:
        JobSpec.model_validate({"evaluate": evaluate})
    assert err.value.param == param


def test_spec_accepts_generative_tasks_and_chat_template() -> None:
    spec = EvaluateSpec.model_validate({"tasks": ["gsm8k", "gsm8k_cot", "lambada_openai", "triviaqa", "nq_open"],
                                        "apply_chat_template": True, "gsm8k_train": "file_x"})
    assert spec.apply_chat_template and spec.gsm8k_train == "file_x"
    assert EvaluateSpec.model_validate({"tasks": ["triviaqa"]}).apply_chat_template is False


# --------------------------------------------------------------------------- display

BEFORE = {"tasks": {"lambada_openai": {"acc": 0.5, "acc_stderr": 0.1, "perplexity": 20.0, "perplexity_stderr": None,
                                       "n": 50, "higher_is_better": {"acc": True, "perplexity": False}},
                    "gsm8k_cot": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.05,
                                  "exact_match,flexible-extract": 0.2, "exact_match_stderr,flexible-extract": 0.06,
                                  "n": 50, "higher_is_better": {"exact_match,strict-match": True,
                                                                "exact_match,flexible-extract": True}}}}
AFTER = json.loads(json.dumps(BEFORE).replace("20.0", "400.0").replace("0.2,", "0.0,"))


def test_compare_results_covers_generative_metrics() -> None:
    from layerprune.core.evaluate import compare_results

    d = compare_results(BEFORE, AFTER)["tasks"]
    assert d["lambada_openai"]["perplexity"]["ratio"] == pytest.approx(20.0)
    assert d["gsm8k_cot"]["exact_match,flexible-extract"]["delta"] == pytest.approx(-0.2)
    assert set(d["gsm8k_cot"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}


def test_cli_table_and_model_card_show_generative_metrics(tmp_path: Path) -> None:
    from layerprune.cli.render import summary_table
    from layerprune.core.export import write_model_card_and_record

    text = summary_table({"metrics": {"before": BEFORE, "after": AFTER}})
    row = next(line for line in text.splitlines() if line.startswith("lambada_openai perplexity"))
    assert "20.00" in row and "400.00" in row and "x20" in row
    assert any(line.startswith("gsm8k_cot exact_match,flexible-extract") and "-0.200" in line
               for line in text.splitlines())
    assert "perplexity: lower is better" in text
    write_model_card_and_record(tmp_path, {"metrics": {"before": BEFORE, "after": AFTER}})
    card = (tmp_path / "README.md").read_text()
    # Human names and the one formatter (core.units): the figures read as on the CLI and the dashboard.
    assert "| LAMBADA | perplexity | lower | 20.00 | 400.00 | x20.0 | 50 |" in card
    assert ("| GSM8K (chain of thought) | exact match (flexible-extract) | higher | 0.200 ± 0.060 | 0.000 ± 0.060 "
            "| -0.200 | 50 |") in card


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_dashboard_direction_of_each_metric(tmp_path: Path) -> None:
    from layerprune.core.units import fields_json

    static = Path(__file__).parents[3] / "layerprune/api/static"
    for name in ("format", "summary"):  # the page's own modules, loadable by node as .mjs
        text = (static / f"{name}.js").read_text().replace('from "./format.js"', 'from "./format.mjs"')
        (tmp_path / f"{name}.mjs").write_text(text)
    result = json.dumps({"metrics": {"before": BEFORE, "after": AFTER}})
    script = f"""import {{ comparisonRows }} from {json.dumps((tmp_path / "summary.mjs").as_uri())};
const rows = comparisonRows({result}, {json.dumps(fields_json())});
console.log(JSON.stringify(Object.fromEntries(rows.map((r) => [r.key, [r.label, r.good, r.verdict, r.afterErr]]))));"""
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert rows["tasks.lambada_openai.perplexity"] == ["LAMBADA perplexity", "lower", "bad", None]  # 20 → 400
    assert rows["tasks.lambada_openai.acc"][:3] == ["LAMBADA accuracy", "higher", "same"]
    assert rows["tasks.gsm8k_cot.exact_match,flexible-extract"] == [
        "GSM8K (chain of thought) exact match (flexible-extract)", "higher", "bad", "0.060"]
