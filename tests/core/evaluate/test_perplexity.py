"""Perplexity (windows, BOS handling, text sources incl. WikiText format) and evaluate_model end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from layerprune.core.errors import DatasetError
from layerprune.core.evaluate import evaluate_model
from layerprune.core.evaluate.loaders import read_wikitext
from layerprune.core.evaluate.perplexity import adds_bos, load_perplexity_text, perplexity
from layerprune.core.spec import EvaluateSpec, PerplexitySpec
from tests.tiny import tiny_model, tiny_tokenizer

# The head of WikiText-2 (raw) as the Hugging Face ``wikitext`` data set stores it: one row per line.
WIKITEXT_ROWS = [
    "",
    " = Valkyria Chronicles III = \n",
    "",
    " Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game . \n",
    " The game began development in 2010 , carrying over a large portion of the work . \n",
    "",
    " = = Gameplay = = \n",
    "",
    " As with previous Valkyira Chronicles games , the game is a tactical role @-@ playing game . \n",
]


def _manual_ppl(model, ids: list[int], seq_len: int, bos: int | None = None) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(len(ids) // seq_len):
            window = ids[w * seq_len : (w + 1) * seq_len]
            inp = torch.tensor([([bos] if bos is not None else []) + window])
            logp = torch.log_softmax(model(input_ids=inp).logits[0].float(), dim=-1)
            for pos in range(inp.shape[1] - 1):
                nll -= float(logp[pos, inp[0, pos + 1]])
                count += 1
    return math.exp(nll / count)


def test_perplexity_is_exp_mean_nll_over_non_overlapping_windows() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("llama")
    text = "".join(WIKITEXT_ROWS) * 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    res = perplexity(model, tok, PerplexitySpec(dataset="inline", seq_len=16), batch_size=3, text=text)
    n = len(ids) // 16
    assert res["num_windows"] == n and res["num_tokens"] == n * 15 and res["bos"] is False
    assert res["value"] == pytest.approx(_manual_ppl(model, ids, 16), rel=1e-4)
    capped = perplexity(model, tok, PerplexitySpec(dataset="inline", seq_len=16, max_windows=2), text=text)
    assert capped["num_windows"] == 2 and capped["num_tokens"] == 30


def test_a_tokenizer_that_adds_bos_gets_it_as_unscored_context() -> None:
    from tokenizers import processors

    tok = tiny_tokenizer().__class__(tokenizer_object=tiny_tokenizer().backend_tokenizer.__class__.from_str(
        tiny_tokenizer().backend_tokenizer.to_str()), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))])
    assert adds_bos(tok) and not adds_bos(tiny_tokenizer())
    model = tiny_model("llama")
    text = "".join(WIKITEXT_ROWS) * 2
    ids = tok(text, add_special_tokens=False)["input_ids"]
    res = perplexity(model, tok, PerplexitySpec(dataset="inline", seq_len=16), text=text)
    assert res["bos"] is True and res["num_tokens"] == res["num_windows"] * 16
    assert res["value"] == pytest.approx(_manual_ppl(model, ids, 16, bos=tok.bos_token_id), rel=1e-4)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_wikitext_format_file_restores_the_original_text(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"wikitext-2-raw-v1-test.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": WIKITEXT_ROWS}), path)
    else:
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKITEXT_ROWS))
    text = "".join(WIKITEXT_ROWS)
    assert read_wikitext(path) == text
    assert load_perplexity_text(str(path)) == text


def test_text_sources_and_their_errors(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text(" = Title = \n\n First   paragraph.\n")
    assert load_perplexity_text(str(plain)) == " = Title = \n\n First   paragraph.\n"
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DatasetError) as err:
        load_perplexity_text(str(latin))
    assert err.value.param == "evaluate.perplexity.dataset"
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "One."}\n{"text": "Two."}\n')
    assert load_perplexity_text(str(rows)) == "One.\n\nTwo."
    assert load_perplexity_text("bundled:wikitext-like").startswith(load_perplexity_text("bundled:wikipedia-eval")[:50])
    with pytest.raises(DatasetError) as err:
        read_wikitext(tmp_path / "missing.parquet")
    assert err.value.param == "evaluate.perplexity.dataset"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DatasetError):
        load_perplexity_text(str(broken))
    with pytest.raises(DatasetError) as err:
        perplexity(tiny_model("llama"), tiny_tokenizer(), PerplexitySpec(dataset="x", seq_len=4096), text="short")
    assert err.value.param == "evaluate.perplexity.dataset"


def test_evaluate_model_on_a_tiny_model_dir(tiny_dirs, tmp_path: Path) -> None:
    model_dir = tiny_dirs("llama")
    text = tmp_path / "eval.txt"
    text.write_text("".join(WIKITEXT_ROWS) * 4)
    spec = EvaluateSpec(perplexity=PerplexitySpec(dataset=str(text), seq_len=32), tasks=["piqa", "winogrande"],
                        limit=3, batch_size=4)
    progress: list[tuple[float, float, str]] = []
    from layerprune.core.hooks import Hooks

    res = evaluate_model(model_dir, spec, Hooks(progress=lambda d, t, m: progress.append((d, t, m))), device="cpu")
    json.dumps(res)  # a job stores it as JSON
    assert set(res) >= {"perplexity", "tasks", "params", "size_bytes", "num_layers", "generation_tokens_per_s",
                        "timings"}
    assert res["num_layers"] == 8 and res["generation_tokens_per_s"] is None
    assert res["size_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert res["perplexity"]["seq_len"] == 32 and res["perplexity"]["value"] > 1
    for task in ("piqa", "winogrande"):
        r = res["tasks"][task]
        assert r["n"] == 3 and 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0
    assert progress and progress[-1][0] == progress[-1][1]


def test_mmlu_is_aggregated_over_its_57_subjects() -> None:
    from layerprune.core.evaluate.multiple_choice import run_tasks
    from layerprune.core.evaluate.tasks import MMLU_CATEGORIES

    model = tiny_model("llama")
    res = run_tasks(model, tiny_tokenizer(), ["mmlu"], limit=1, batch_size=32)["mmlu"]
    assert res["n"] == 57 and len(res["subtasks"]) == 57
    assert res["acc"] == pytest.approx(sum(s["acc"] for s in res["subtasks"].values()) / 57)
    assert set(res["categories"]) == set(MMLU_CATEGORIES)
    assert sum(c["n"] for c in res["categories"].values()) == 57


@pytest.mark.slow
def test_bundled_model_perplexity(bundled_dir: Path) -> None:
    spec = EvaluateSpec(perplexity=PerplexitySpec(dataset="bundled:wikitext-like", seq_len=128, max_windows=4),
                        tasks=["arc_easy"], limit=4, batch_size=16)
    res = evaluate_model(bundled_dir, spec, device="cpu")
    # Seen on this model: about 20 on Wikipedia paragraphs (docs/data.md, the bundled model).
    assert 8 < res["perplexity"]["value"] < 40 and res["perplexity"]["bos"] is False
    assert res["perplexity"]["num_tokens"] == 4 * 127
    assert res["num_layers"] == 30 and 130e6 < res["params"] < 140e6
    assert res["tasks"]["arc_easy"]["n"] == 4
