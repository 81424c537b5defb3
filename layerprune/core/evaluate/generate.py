"""Batched greedy generation until stop strings, as lm-evaluation-harness's HF backend generates.

What is generated is lm-eval 0.4's ``HFLM.generate_until`` (``models/huggingface.py``):

* each context is encoded as ``tok_encode`` does (the tokenizer's own special-token default, none
  added when the string already starts with the BOS text) and left-truncated to
  ``max_length - max_gen_toks`` tokens;
* requests are sorted longest first (ties by context string) and cut into batches of
  ``batch_size``, which left-pads them to the longest: the same batches, so the same arithmetic;
* greedy decoding (argmax, first index on ties), at most ``max_gen_toks`` new tokens; a row ends at
  the model's end-of-sequence token(s) (``generation_config.eos_token_id``, as ``generate``);
* the stop strings are the task's ``until`` plus the tokenizer's EOS text; the continuation is
  decoded without special tokens and cut before each stop string in turn
  (``postprocess_generated_text``).

How, faster: one prefill of the padded batch (attention mask, position ids counted over the real
tokens only; a token prefix that every context of the batch shares, such as few-shot examples,
runs once and its KV cache is copied to each row), then one token per step with the KV cache. A row stops as soon as its own decoded
text holds a stop string (lm-eval's stopping criterion waits until *every* row has met the *same*
stop string, and keeps generating for the others); finished rows leave the batch (their cache
rows are dropped), and the batch ends when no row is left. Generating past a stop string changes
nothing, since the text is cut there anyway, so the output is lm-eval's.

Not reproduced: logits processors a model's ``generation_config`` may ask ``generate`` for
(repetition penalty, n-gram blocking, suppressed tokens); a warning names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from layerprune.core.evaluate.generative import DEFAULT_MAX_GEN_TOKS
from layerprune.core.evaluate.loglik import (
    _cache_kwarg,
    _common_prefix,
    _left_padded,
    _pad_id,
    model_max_length,
    tok_encode,
)
from layerprune.core.hooks import NO_HOOKS, Hooks

MIN_SHARED_PREFIX = 32  # shorter common prefixes are cheaper to recompute than to copy
# generation_config fields that would make transformers' generate() differ from plain argmax.
_PROCESSOR_FIELDS = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "min_length": 0, "min_new_tokens": None, "sequence_bias": None,
}


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a row, as ``generate`` reads them (generation config, else model config, else tokenizer)."""
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}
    return {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()


def stop_strings(tokenizer: Any, until: Sequence[str]) -> list[str]:
    """``until`` plus the tokenizer's EOS text (lm-eval's ``handle_stop_sequences``)."""
    out = list(until)
    if tokenizer.eos_token_id is not None:
        eos = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)
        if eos not in out:
            out.append(eos)
    return out


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    for term in stops:
        if term:
            text = text.split(term)[0]
    return text


def unsupported_processors(model: Any) -> list[str]:
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return []
    return [k for k, neutral in _PROCESSOR_FIELDS.items() if getattr(cfg, k, neutral) not in (neutral, None, [], 1)]


def _prefill(model: Any, seqs: list[list[int]], device: torch.device) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """(model output, cache, attention mask, last position) after running every context once.

    Contexts that share a long token prefix (few-shot examples) run it once: its KV cache is
    copied to every row, which then runs only its own suffix, left-padded after the prefix.
    """
    pad = _pad_id(model)
    # Every row keeps at least one token of its own, so the last position is computed for each.
    p = min(_common_prefix(seqs), min(len(s) for s in seqs) - 1) if len(seqs) > 1 else 0
    if p >= MIN_SHARED_PREFIX:
        head = model(input_ids=torch.tensor([seqs[0][:p]], device=device), use_cache=True, logits_to_keep=1)
        cache = getattr(head, "cache", None) or head.past_key_values
        cache.batch_select_indices(torch.zeros(len(seqs), dtype=torch.long, device=device))
        ids, smask, pos = _left_padded([s[p:] for s in seqs], pad, [p] * len(seqs))
        mask = torch.cat([torch.ones((len(seqs), p), dtype=torch.long), smask], dim=1).to(device)
        out = model(input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device), use_cache=True,
                    logits_to_keep=1, **{_cache_kwarg(model): cache})
        return out, getattr(out, "cache", None) or out.past_key_values, mask, pos[:, -1].to(device)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s):] = 1
    # As generate() makes them: positions count real tokens only; pads get 1 (never attended to).
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    mask, ids, pos = mask.to(device), ids.to(device), pos.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    return out, getattr(out, "cache", None) or out.past_key_values, mask, pos[:, -1]


@torch.inference_mode()
def _generate_batch(model: Any, tokenizer: Any, seqs: list[list[int]], stops: list[str], eos: set[int],
                    max_gen_toks: int) -> list[list[int]]:
    device = next(model.parameters()).device
    out, cache, mask, last = _prefill(model, seqs, device)
    kwarg = _cache_kwarg(model)
    nxt = out.logits[:, -1, :].float().argmax(-1)
    generated: list[list[int]] = [[] for _ in seqs]
    rows = list(range(len(seqs)))  # batch row -> request index, for the rows still generating
    for step in range(max_gen_toks):
        tokens = nxt.tolist()
        keep: list[int] = []
        for b, tok in enumerate(tokens):
            r = rows[b]
            generated[r].append(tok)
            if tok in eos or step + 1 == max_gen_toks:
                continue
            text = tokenizer.decode(generated[r], skip_special_tokens=True)
            if any(s and s in text for s in stops):
                continue
            keep.append(b)
        if not keep:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, last, nxt = mask[index], last[index], nxt[index]
            rows = [rows[b] for b in keep]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        last = last + 1
        out = model(input_ids=nxt.unsqueeze(-1), attention_mask=mask, position_ids=last.unsqueeze(-1),
                    use_cache=True, **{kwarg: cache})
        cache = getattr(out, "cache", None) or out.past_key_values
        nxt = out.logits[:, -1, :].float().argmax(-1)
    return generated


def greedy_until(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    until: Sequence[str],
    *,
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    batch_size: int = 16,
    max_length: int | None = None,
    hooks: Hooks = NO_HOOKS,
    done_before: int = 0,
    total: int | None = None,
) -> list[str]:
    """The greedy continuation of each context, cut before its first stop string (lm-eval's text)."""
    if max_length is None:
        max_length = model_max_length(model.config, tokenizer)
    max_ctx = max_length - max_gen_toks
    if max_ctx <= 0:
        raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context in {max_length} positions")
    stops = stop_strings(tokenizer, until)
    eos = eos_token_ids(model, tokenizer)
    encoded = [tok_encode(tokenizer, c) for c in contexts]
    order = sorted(range(len(contexts)), key=lambda i: (-len(encoded[i]), contexts[i]))
    out = [""] * len(contexts)
    total = total if total is not None else len(contexts)
    done = done_before
    for start in range(0, len(order), batch_size):
        hooks.check()
        chunk = order[start:start + batch_size]
        gens = _generate_batch(model, tokenizer, [encoded[i][-max_ctx:] for i in chunk], stops, eos, max_gen_toks)
        for i, gen in zip(chunk, gens, strict=True):
            out[i] = cut_at_stops(tokenizer.decode(gen, skip_special_tokens=True), stops)
        done += len(chunk)
        hooks.progress(done, total, "generating")
    return out
