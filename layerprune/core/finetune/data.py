"""Training examples: validate rows, render prompts, tokenise, label the response only, batch.

Formats (``FinetuneSpec.format``):

* ``alpaca``: ``instruction``, optional ``input``, ``output``, rendered with the standard Stanford
  Alpaca template (one variant with input, one without);
* ``dolly``: ``instruction``, optional ``context``, ``response``: the Alpaca template with the
  context as the input;
* ``chat``: ``messages`` = [{role, content}], rendered with the tokenizer's chat template; the loss
  covers the last message, which must come from the assistant;
* ``text``: ``text``; the loss covers every token (optionally packed into full windows).

Every instruction example is ``prompt + response + EOS``; labels are -100 over the prompt so the
loss is on the response only (docs/methods.md §5, invariant 7), then everything is cut at ``max_seq_len``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from layerprune.core.errors import DatasetError

IGNORE = -100
PARAM = "finetune.dataset"

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

# field name -> required?, per format
FIELDS: dict[str, dict[str, bool]] = {
    "alpaca": {"instruction": True, "input": False, "output": True},
    "dolly": {"instruction": True, "context": False, "response": True},
    "text": {"text": True},
    "chat": {"messages": True},
}


def validate_rows(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Check every row has the fields of ``fmt``; a bad row is a DatasetError naming its number (1-based)."""
    if fmt not in FIELDS:
        raise DatasetError(f"unknown format '{fmt}'", param="finetune.format")
    if not rows:
        raise DatasetError("the data set is empty", param=PARAM)
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DatasetError(f"row {n}: expected an object", param=PARAM)
        for name, required in FIELDS[fmt].items():
            value = row.get(name)
            if value is None:
                if required:
                    raise DatasetError(f"row {n}: missing field '{name}' (format '{fmt}')", param=PARAM)
                continue
            if fmt == "chat":
                _check_messages(value, n)
            elif not isinstance(value, str):
                raise DatasetError(f"row {n}: field '{name}' must be a string", param=PARAM)
            elif required and not value.strip():
                raise DatasetError(f"row {n}: field '{name}' is empty", param=PARAM)
    return rows


def row_problem(row: Any, fmt: str) -> str | None:
    """Why one row does not fit ``fmt`` (validate_rows' check of a row), or None when it does.
    Torch-free: the API checks every line of an upload with it."""
    try:
        validate_rows([row], fmt)
    except DatasetError as exc:
        return exc.message.removeprefix("row 1: ")
    return None


def _check_messages(messages: Any, n: int) -> None:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"row {n}: 'messages' must be a non-empty list", param=PARAM)
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DatasetError(f"row {n}: each message needs string 'role' and 'content'", param=PARAM)
    if messages[-1]["role"] != "assistant":
        raise DatasetError(f"row {n}: the last message must have role 'assistant'", param=PARAM)


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    if input_text and input_text.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def prompt_and_response(row: dict[str, Any], fmt: str, tokenizer: Any) -> tuple[str, str]:
    """The text the loss ignores and the text it is computed on."""
    if fmt == "alpaca":
        return alpaca_prompt(row["instruction"], row.get("input")), row["output"]
    if fmt == "dolly":
        return alpaca_prompt(row["instruction"], row.get("context")), row["response"]
    if fmt == "chat":
        messages = row["messages"]
        if getattr(tokenizer, "chat_template", None) is None:
            raise DatasetError("format 'chat' needs a tokenizer with a chat template", param="finetune.format")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            # Templates that rewrite earlier turns: fall back to the last message's content alone.
            return prompt, messages[-1]["content"]
        response = full[len(prompt):]
        # The template's own end-of-turn marker is part of the response; EOS is appended after it.
        if tokenizer.eos_token and response.rstrip().endswith(tokenizer.eos_token):
            response = response.rstrip()[: -len(tokenizer.eos_token)]
        return prompt, response
    raise DatasetError(f"format '{fmt}' has no prompt", param="finetune.format")


def _bos(tokenizer: Any) -> list[int]:
    # Explicit BOS handling: add it only where the tokenizer says to (SmolLM2 says not to).
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        return [int(tokenizer.bos_token_id)]
    return []


def encode_instruction(prompt: str, response: str, tokenizer: Any, max_seq_len: int) -> dict[str, list[int]]:
    """``prompt + response + EOS`` with labels -100 up to the end of the prompt, cut at max_seq_len."""
    prompt_ids = _bos(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [int(tokenizer.eos_token_id)]
    ids = (prompt_ids + response_ids)[:max_seq_len]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_seq_len]
    return {"input_ids": ids, "labels": labels}


def encode_texts(texts: list[str], tokenizer: Any, max_seq_len: int, packing: bool) -> list[dict[str, list[int]]]:
    """Plain text: every token is a target. With packing, texts (each + EOS) are joined and cut
    into full windows of max_seq_len (the remainder is dropped); without, each is cut on its own."""
    eos = int(tokenizer.eos_token_id)
    encoded = [_bos(tokenizer) + tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    if not packing:
        return [{"input_ids": ids[:max_seq_len], "labels": ids[:max_seq_len]} for ids in encoded]
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
    out = []
    for start in range(0, len(stream) - max_seq_len + 1, max_seq_len):
        window = stream[start : start + max_seq_len]
        out.append({"input_ids": window, "labels": list(window)})
    if not out and stream:
        out.append({"input_ids": stream, "labels": list(stream)})
    return out


def tokenize_examples(rows: list[dict[str, Any]], fmt: str, tokenizer: Any, max_seq_len: int,
                      packing: bool = False) -> list[dict[str, list[int]]]:
    """Token ids and labels of validated rows; examples left with no target token are dropped."""
    if tokenizer.eos_token_id is None:
        raise DatasetError("the tokenizer has no EOS token", param="model")
    if fmt == "text":
        examples = encode_texts([r["text"] for r in rows], tokenizer, max_seq_len, packing)
    else:
        examples = []
        for row in rows:
            prompt, response = prompt_and_response(row, fmt, tokenizer)
            examples.append(encode_instruction(prompt, response, tokenizer, max_seq_len))
    # A target is a label at position >= 1 (the first token is never predicted).
    kept = [e for e in examples if any(label != IGNORE for label in e["labels"][1:])]
    if not kept:
        raise DatasetError(
            f"no example has a response token within max_seq_len {max_seq_len}", param="finetune.max_seq_len"
        )
    return kept


def split_validation(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded random split: (train, validation). At least one example stays in each part."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


@dataclass(frozen=True)
class MicroBatch:
    """Indices of the examples of one micro-batch; fixed for the whole run so a frozen-trunk
    cache entry stays valid across epochs (only the order of micro-batches is reshuffled)."""

    index: int
    examples: tuple[int, ...]


def make_micro_batches(num_examples: int, micro_batch_size: int, seed: int) -> list[MicroBatch]:
    order = list(range(num_examples))
    random.Random(seed).shuffle(order)
    out = []
    for i, start in enumerate(range(0, num_examples, micro_batch_size)):
        out.append(MicroBatch(i, tuple(order[start : start + micro_batch_size])))
    return out


def epoch_order(num_micro_batches: int, seed: int, epoch: int) -> list[int]:
    """The micro-batch order of one epoch: a function of (seed, epoch) only, so a resumed run
    replays the same order without storing it."""
    order = list(range(num_micro_batches))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def collate(examples: list[dict[str, list[int]]], pad_id: int):  # type: ignore[no-untyped-def]
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (labels -100 on padding)."""
    import torch  # noqa: PLC0415 - keeps torch out of the API

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e["labels"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_count(example: dict[str, list[int]]) -> int:
    """Tokens the loss is computed on (labels are shifted by one, so position 0 never counts)."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE)
