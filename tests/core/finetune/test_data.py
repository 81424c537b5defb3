"""Healing data: formats, response-only labels, splits, and typed errors for bad input (no model)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from layerprune.core.errors import DatasetError, DeviceUnavailableError, SpecError
from layerprune.core.finetune import check_finetune_spec, load_examples
from layerprune.core.finetune.data import (
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    IGNORE,
    collate,
    encode_instruction,
    epoch_order,
    make_micro_batches,
    prompt_and_response,
    split_validation,
    target_count,
    tokenize_examples,
    validate_rows,
)
from layerprune.core.finetune.loop import lr_factor
from layerprune.core.spec import FinetuneSpec
from tests.tiny import tiny_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_alpaca_prompt_is_the_stanford_template_with_and_without_input():
    tok = tiny_tokenizer()
    p, r = prompt_and_response({"instruction": "Add.", "input": "2 3", "output": "5"}, "alpaca", tok)
    assert p == ALPACA_WITH_INPUT.format(instruction="Add.", input="2 3") and r == "5"
    assert p.startswith("Below is an instruction that describes a task, paired with an input")
    assert p.endswith("### Input:\n2 3\n\n### Response:\n")
    p, _ = prompt_and_response({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca", tok)
    assert p == ALPACA_NO_INPUT.format(instruction="Say hi.")
    assert "### Input" not in p


def test_dolly_uses_context_as_input():
    tok = tiny_tokenizer()
    p, r = prompt_and_response({"instruction": "Q?", "context": "ctx", "response": "A."}, "dolly", tok)
    assert "### Input:\nctx\n\n### Response:\n" in p and r == "A."
    p, _ = prompt_and_response({"instruction": "Q?", "response": "A."}, "dolly", tok)
    assert "### Input" not in p


def test_chat_uses_the_tokenizer_template_and_trains_the_last_assistant_turn():
    tok = tiny_tokenizer()
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    p, r = prompt_and_response({"messages": msgs}, "chat", tok)
    assert p == "<s>user\nhello</s>\n<s>assistant\n"
    assert r.startswith("hi there")
    ex = tokenize_examples([{"messages": msgs}], "chat", tok, 512)[0]
    assert ex["input_ids"][-1] == tok.eos_token_id
    n_prompt = len(tok(p, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert all(label != IGNORE for label in ex["labels"][n_prompt:])


def test_response_only_labels_eos_and_truncation():
    tok = tiny_tokenizer()
    prompt = ALPACA_WITH_INPUT.format(instruction="Add the numbers.", input="2 and 3")
    ex = encode_instruction(prompt, "The answer is 5.", tok, 1024)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    resp = tok("The answer is 5.", add_special_tokens=False)["input_ids"]
    # §5.7: every label up to the end of the prompt is -100; the response and EOS are targets.
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == resp + [tok.eos_token_id]
    assert ex["input_ids"] == ex["input_ids"][:n_prompt] + resp + [tok.eos_token_id]
    assert target_count(ex) == len(resp) + 1
    cut = encode_instruction(prompt, "The answer is 5.", tok, n_prompt + 2)
    assert len(cut["input_ids"]) == len(cut["labels"]) == n_prompt + 2
    assert cut["labels"][n_prompt:] == resp[:2]


def test_examples_without_a_target_within_max_seq_len_are_dropped_or_refused():
    tok = tiny_tokenizer()
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
    with pytest.raises(DatasetError) as e:
        tokenize_examples(rows, "alpaca", tok, 8)
    assert e.value.param == "finetune.max_seq_len"


def test_text_format_trains_every_token_and_packs_into_full_windows():
    tok = tiny_tokenizer()
    rows = [{"text": "The cat sat on the mat."}, {"text": "A dog ran in the park today."}]
    plain = tokenize_examples(rows, "text", tok, 512)
    assert len(plain) == 2 and all(e["labels"] == e["input_ids"] for e in plain)
    assert all(e["input_ids"][-1] == tok.eos_token_id for e in plain)
    total = sum(len(e["input_ids"]) for e in plain)
    packed = tokenize_examples(rows, "text", tok, 5, packing=True)
    assert all(len(e["input_ids"]) == 5 for e in packed) and len(packed) == total // 5
    assert packed[0]["input_ids"] + packed[1]["input_ids"] == (plain[0]["input_ids"] + plain[1]["input_ids"])[:10]


def test_each_format_is_validated_and_bad_rows_name_their_number(tmp_path):
    ok = {
        "alpaca": [{"instruction": "a", "output": "b"}, {"instruction": "a", "input": "c", "output": "b"}],
        "dolly": [{"instruction": "a", "context": "c", "response": "b"}],
        "chat": [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}],
        "text": [{"text": "hello"}],
    }
    for fmt, rows in ok.items():
        spec = FinetuneSpec(format=fmt, dataset=write_jsonl(tmp_path / f"{fmt}.jsonl", rows))
        assert load_examples(spec) == rows
    bad = {
        "alpaca": [{"instruction": "a", "output": "b"}, {"instruction": "a"}],
        "dolly": [{"instruction": "a", "context": "c", "response": "b"}, {"instruction": "a", "output": "b"}],
        "chat": [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
                 {"messages": [{"role": "user", "content": "x"}]}],
        "text": [{"text": "hello"}, {"body": "hello"}],
    }
    for fmt, rows in bad.items():
        spec = FinetuneSpec(format=fmt, dataset=write_jsonl(tmp_path / f"bad-{fmt}.jsonl", rows))
        with pytest.raises(DatasetError) as e:
            load_examples(spec)
        assert e.value.param == "finetune.dataset" and "row 2" in e.value.message, fmt


def test_missing_field_and_wrong_types_are_dataset_errors():
    with pytest.raises(DatasetError, match="row 1: missing field 'output'"):
        validate_rows([{"instruction": "a"}], "alpaca")
    with pytest.raises(DatasetError, match="must be a string"):
        validate_rows([{"instruction": "a", "output": 3}], "alpaca")
    with pytest.raises(DatasetError, match="is empty"):
        validate_rows([{"instruction": " ", "output": "b"}], "alpaca")
    with pytest.raises(DatasetError, match="role"):
        validate_rows([{"messages": [{"role": "assistant"}]}], "chat")


def test_empty_data_set_is_a_dataset_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError) as e:
        load_examples(FinetuneSpec(dataset=str(empty)))
    assert e.value.param == "finetune.dataset"
    with pytest.raises(DatasetError) as e:
        validate_rows([], "alpaca")
    assert e.value.param == "finetune.dataset"
    with pytest.raises(DatasetError) as e:
        load_examples(FinetuneSpec(dataset=str(tmp_path / "nope.jsonl")))
    assert e.value.param == "finetune.dataset"


def test_bundled_instructions_validate_as_alpaca():
    rows = load_examples(FinetuneSpec(dataset="bundled:instructions", format="alpaca"))
    assert len(rows) > 1000


def test_spec_errors_name_the_field():
    with pytest.raises(ValidationError) as e:
        FinetuneSpec(learning_rate=0)
    assert e.value.errors()[0]["loc"] == ("learning_rate",)
    with pytest.raises(ValidationError) as e:
        FinetuneSpec(learning_rate=-1e-5)
    assert e.value.errors()[0]["loc"] == ("learning_rate",)
    with pytest.raises(ValidationError) as e:
        FinetuneSpec(format="sharegpt")
    assert e.value.errors()[0]["loc"] == ("format",)
    with pytest.raises(SpecError) as e2:
        FinetuneSpec(batch_size=10, micro_batch_size=4)
    assert e2.value.param == "finetune.micro_batch_size"


def test_check_finetune_spec_refuses_what_the_model_or_worker_cannot_do():
    with pytest.raises(SpecError) as e:
        check_finetune_spec(FinetuneSpec(trainable_last_layers=23), 22, cuda_available=False)
    assert e.value.param == "finetune.trainable_last_layers"
    check_finetune_spec(FinetuneSpec(trainable_last_layers=22), 22, cuda_available=False)
    check_finetune_spec(FinetuneSpec(trainable_last_layers=0), 22, cuda_available=False)
    with pytest.raises(DeviceUnavailableError) as e3:
        check_finetune_spec(FinetuneSpec(method="qlora"), 22, cuda_available=False)
    assert e3.value.param == "finetune.method" and e3.value.code == "device_unavailable"
    with pytest.raises(SpecError) as e:
        check_finetune_spec(FinetuneSpec(dataset=" "), 22, cuda_available=False)
    assert e.value.param == "finetune.dataset"
    check_finetune_spec(FinetuneSpec(method="lora", trainable_last_layers=99), 22, cuda_available=False)


def test_validation_split_is_seeded_disjoint_and_non_empty():
    items = list(range(50))
    train, val = split_validation(items, 0.1, 42)
    assert len(val) == 5 and sorted(train + val) == items
    assert split_validation(items, 0.1, 42) == (train, val)
    assert split_validation(items, 0.1, 7)[1] != val
    assert split_validation(items, 0.0, 42) == (items, [])
    assert len(split_validation([1, 2], 0.01, 0)[1]) == 1


def test_micro_batches_are_fixed_and_epoch_orders_are_seeded_permutations():
    mbs = make_micro_batches(10, 4, 42)
    assert [len(m.examples) for m in mbs] == [4, 4, 2]
    assert sorted(i for m in mbs for i in m.examples) == list(range(10))
    assert make_micro_batches(10, 4, 42) == mbs
    assert sorted(epoch_order(7, 1, 0)) == list(range(7))
    assert epoch_order(7, 1, 0) == epoch_order(7, 1, 0)
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1)


def test_collate_pads_right_and_masks_labels():
    out = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_learning_rate_warms_up_linearly_then_decays_linearly_to_zero():
    total, warm = 10, 4
    factors = [lr_factor(s, warm, total) for s in range(total)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert lr_factor(0, 0, 3) == 1.0


def test_the_public_api_imports_without_torch():
    # The API validates finetune specs with check_finetune_spec and must not pay for torch.
    import subprocess
    import sys

    code = ("import sys, layerprune.core.finetune as f; f.check_finetune_spec; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
