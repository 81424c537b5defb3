"""Sample answers (evaluate.samples): the spec, generation against transformers' generate, display."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerprune.cli.render import summary_table
from layerprune.core.errors import SpecError
from layerprune.core.evaluate import evaluate_model
from layerprune.core.evaluate.report import sample_pairs
from layerprune.core.evaluate.samples import generate_samples, render_prompt
from layerprune.core.export import write_model_card_and_record
from layerprune.core.spec import EvaluateSpec, SamplesSpec

PROMPT = "What is the capital of France?"


def test_spec_shorthand_defaults_and_bounds() -> None:
    spec = EvaluateSpec.model_validate({"samples": [PROMPT]})
    assert spec.samples == SamplesSpec(prompts=[PROMPT], max_new_tokens=48, chat_template=None)
    assert EvaluateSpec.model_validate({"samples": {"prompts": ["a"], "max_new_tokens": 5}}).samples.max_new_tokens == 5
    for bad in ({"samples": []}, {"samples": [""]}, {"samples": ["a"] * 9}, {"samples": {"prompts": ["a"], "max_new_tokens": 0}},
                {"samples": {"prompts": ["a"], "temperature": 1}}):
        with pytest.raises(ValueError):
            EvaluateSpec.model_validate(bad)
    with pytest.raises(SpecError):
        EvaluateSpec.model_validate({})


def test_api_names_the_field_of_a_bad_sample_setting() -> None:
    from layerprune.core.spec import JobSpec

    with pytest.raises(ValueError) as err:
        JobSpec.model_validate({"model": "bundled:smollm2-135m-instruct", "evaluate": {"samples": {"prompts": ["a"] * 9}}})
    assert "samples" in str(err.value)


def _hf_answer(model, tokenizer, text: str, n: int) -> str:
    ids = torch.tensor([tokenizer.encode(text)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_answers_equal_transformers_generate_with_the_chat_template(bundled_dir: Path) -> None:
    """The reference is transformers' own greedy generate() on the tokenizer's own chat rendering."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    spec = SamplesSpec(prompts=[PROMPT, "Name a primary colour."], max_new_tokens=24)
    ours = generate_samples(model, tokenizer, spec)
    for sample in ours:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": sample["prompt"]}], tokenize=False,
                                             add_generation_prompt=True)
        assert render_prompt(tokenizer, sample["prompt"], None) == chat
        assert sample["text"] == _hf_answer(model, tokenizer, chat, 24)
    # The dense bundled model knows this one: a check that the rendering is the one it was tuned on.
    assert "Paris" in ours[0]["text"]
    raw = generate_samples(model, tokenizer, SamplesSpec(prompts=[PROMPT], max_new_tokens=8, chat_template=False))
    assert raw[0]["text"] == _hf_answer(model, tokenizer, PROMPT, 8)


def test_evaluate_model_reports_samples_and_an_only_samples_spec_is_valid(bundled_dir: Path) -> None:
    spec = EvaluateSpec.model_validate({"samples": {"prompts": [PROMPT], "max_new_tokens": 6}})
    result = evaluate_model(bundled_dir, spec)
    assert [s["prompt"] for s in result["samples"]] == [PROMPT]
    assert result["perplexity"] is None and result["tasks"] == {} and "samples_s" in result["timings"]


def test_cli_summary_and_model_card_show_before_and_after(tmp_path: Path) -> None:
    metrics = {"before": {"samples": [{"prompt": PROMPT, "text": "The capital of France is Paris."}]},
               "after": {"samples": [{"prompt": PROMPT, "text": "Paris is\nthe capital."}]}}
    assert sample_pairs(metrics) == [(PROMPT, "The capital of France is Paris.", "Paris is\nthe capital.")]
    text = summary_table({"metrics": metrics})
    assert f"prompt: {PROMPT}\n  before: The capital of France is Paris.\n  after:  Paris is the capital." in text
    write_model_card_and_record(tmp_path, {"metrics": metrics})
    card = (tmp_path / "README.md").read_text()
    assert f"**Prompt:** {PROMPT}" in card and "> Paris is\n> the capital." in card
    # An evaluate-only job has no "before": only the answer.
    assert "before:" not in summary_table({"metrics": {"after": metrics["after"]}})
