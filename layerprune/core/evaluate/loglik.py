"""Batched log-likelihood of continuations given contexts, scored as lm-evaluation-harness's HF backend.

Encoding follows lm-eval 0.4 (``api/model.py::_encode_pair``, ``HFLM.tok_encode``,
``HFLM._loglikelihood_tokens``):

* trailing whitespace of the context moves to the front of the continuation;
* ``whole = encode(context + continuation)``, ``ctx = encode(context)``, the continuation's tokens
  are ``whole[len(ctx):]`` (so a token that merges across the boundary counts for the context);
* ``encode`` uses the tokenizer's own special-token default (BOS only if the tokenizer adds one),
  except that a string already starting with the BOS text gets none added;
* an empty context becomes the prefix token (BOS, else EOS);
* the model input is ``(ctx + cont)[-(max_length + 1):][:-1]`` and the continuation is scored on the
  last ``len(cont)`` positions: the sum of log-softmax of its tokens.

Speed, without changing what is computed: the requests of one document share their leading input
tokens (the context, for all tasks but WinoGrande, where it is the sentence up to the blank). That
common prefix runs once, and its KV cache is copied to every continuation of the document, which
then runs only its own tokens; continuations that share their whole input (MMLU's " A".." D") share
one row. Documents are sorted longest first so a batch pads little, and only the logits of the
scored positions are computed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from layerprune.core.hooks import NO_HOOKS, Hooks

TOKENIZER_INFINITY = 1000000000000000019884624838656
DEFAULT_MAX_LENGTH = 2048
_SEQLEN_CONFIG_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
ROWS_PER_DOCUMENT = 4  # continuation rows per document a cached batch may hold on average


def model_max_length(config: Any, tokenizer: Any = None) -> int:
    """lm-eval's ``resolve_max_length``: config positions, else the tokenizer's limit, else 2048."""
    cfg = getattr(config, "text_config", None) or config
    for attr in _SEQLEN_CONFIG_ATTRS:
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


def prefix_token_id(tokenizer: Any) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, text: str) -> list[int]:
    kwargs: dict[str, Any] = {}
    if text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) of one request, as lm-eval's causal HF backend makes them."""
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


@dataclass
class _Unit:
    """Requests that share ``prefix`` (their common leading input tokens).

    ``rows`` maps each distinct suffix (the rest of the input) to the requests scored on it: the
    choices of an MMLU or BoolQ question differ only in their one target token, so they share one
    row whose logits serve all of them.
    """

    prefix: list[int]
    rows: dict[tuple[int, ...], list[tuple[int, list[int]]]] = field(default_factory=dict)

    def add(self, request: int, suffix: list[int], targets: list[int]) -> None:
        self.rows.setdefault(tuple(suffix), []).append((request, targets))

    @property
    def length(self) -> int:
        return len(self.prefix) + max(len(s) for s in self.rows)

    @property
    def num_requests(self) -> int:
        return sum(len(r) for r in self.rows.values())


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        for s in seqs[1:]:
            if s[i] != t:
                return i
    return n


def _plan(items: list[tuple[list[int], list[int]]], groups: Sequence[Sequence[int]], share: bool) -> list[_Unit]:
    units: list[_Unit] = []
    for g in groups:
        inps = [items[i][0] for i in g]
        # The prefix never reaches a scored position, so every scored logit comes from the suffix pass.
        p = min(_common_prefix(inps), min(len(items[i][0]) - len(items[i][1]) for i in g)) if share else 0
        if p >= 1:
            unit = _Unit(prefix=inps[0][:p])
            for i in g:
                unit.add(i, items[i][0][p:], items[i][1])
            units.append(unit)
            continue
        for i in g:
            inp, targets = items[i]
            p = len(inp) - len(targets) if share else 0
            unit = _Unit(prefix=inp[:p])
            unit.add(i, inp[p:], targets)
            units.append(unit)
    return units


def _batches(units: list[_Unit], batch_size: int, rows_per_unit_cap: int = 1) -> list[list[_Unit]]:
    """Consecutive units, at most ``batch_size`` of them and ``batch_size * rows_per_unit_cap`` rows."""
    out: list[list[_Unit]] = []
    cur: list[_Unit] = []
    rows = 0
    for u in units:
        if cur and (len(cur) >= batch_size or rows + len(u.rows) > batch_size * rows_per_unit_cap):
            out.append(cur)
            cur, rows = [], 0
        cur.append(u)
        rows += len(u.rows)
    if cur:
        out.append(cur)
    return out


def _cache_kwarg(model: Any) -> str:
    # transformers 5.2x renamed ``past_key_values`` to ``cache``; accept both.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _pad_id(model: Any) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


@torch.inference_mode()
def _run_cached(model: Any, units: list[_Unit], device: torch.device, out: list[float]) -> None:
    pad = _pad_id(model)
    lp = max(len(u.prefix) for u in units)
    ids = torch.full((len(units), lp), pad, dtype=torch.long)
    mask = torch.zeros((len(units), lp), dtype=torch.long)
    for b, u in enumerate(units):
        ids[b, : len(u.prefix)] = torch.tensor(u.prefix)
        mask[b, : len(u.prefix)] = 1
    # Prefixes are right-padded: a pad query still sees its row's real tokens, so no row is fully masked.
    res = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, logits_to_keep=1)
    cache = getattr(res, "cache", None) or res.past_key_values
    owner = [b for b, u in enumerate(units) for _ in u.rows]
    rows = [(list(suffix), reqs) for u in units for suffix, reqs in u.rows.items()]
    cache.batch_select_indices(torch.tensor(owner, device=device))
    k = max(len(t) for _, reqs in rows for _, t in reqs)
    # Each suffix's positions continue from the end of its own prefix.
    sids, smask, pos = _left_padded([suffix for suffix, _ in rows], pad,
                                    [len(units[owner[i]].prefix) for i in range(len(rows))])
    attn = torch.cat([mask[owner], smask], dim=1)
    res = model(
        input_ids=sids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
        use_cache=True, logits_to_keep=k, **{_cache_kwarg(model): cache},
    )
    _gather(res.logits, [(i, reqs) for i, (_, reqs) in enumerate(rows)], k, out)


def _left_padded(seqs: list[list[int]], pad: int, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of ``seqs``, left-padded to one length.

    Left padding puts every row's scored positions last, so ``logits_to_keep`` computes only
    those. Row i's positions count on from ``starts[i]``; its pad positions repeat that start.
    """
    length = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    pos = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        n = len(seq)
        ids[i, length - n :] = torch.tensor(seq)
        mask[i, length - n :] = 1
        pos[i, :] = start
        pos[i, length - n :] = torch.arange(start, start + n)
    return ids, mask, pos


def _gather(logits: torch.Tensor, rows: list[tuple[int, list[tuple[int, list[int]]]]], k: int,
            out: list[float]) -> None:
    # log p(target) = logit(target) - logsumexp(logits), one row at a time in fp32: no full
    # [rows, positions, vocab] log-softmax copy is ever made.
    for i, reqs in rows:
        for req, targets in reqs:
            n = len(targets)
            row = logits[i, k - n :, :].float()
            tgt = torch.tensor(targets, device=row.device).unsqueeze(-1)
            out[req] = float((row.gather(-1, tgt).squeeze(-1) - torch.logsumexp(row, dim=-1)).sum())


@torch.inference_mode()
def _run_plain(model: Any, units: list[_Unit], device: torch.device, out: list[float]) -> None:
    # Whole inputs in one pass, for units with nothing to share (a single distinct input row).
    pad = _pad_id(model)
    rows = [(u.prefix + list(s), reqs) for u in units for s, reqs in u.rows.items()]
    k = max(len(t) for _, reqs in rows for _, t in reqs)
    ids, mask, pos = _left_padded([inp for inp, _ in rows], pad, [0] * len(rows))
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=False, logits_to_keep=k).logits
    _gather(logits, [(i, reqs) for i, (_, reqs) in enumerate(rows)], k, out)


def loglikelihoods(
    model: Any,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    groups: Sequence[Sequence[int]] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    share_prefix: bool = True,
    hooks: Hooks = NO_HOOKS,
    on_scored: Callable[[list[int]], None] | None = None,
) -> list[float]:
    """Summed log-probability of each request's continuation tokens given its context tokens.

    ``requests`` are (context tokens, continuation tokens) from :func:`encode_pair`; ``groups``
    lists the requests of each document (their common prefix runs once). ``batch_size`` counts
    documents per forward pass (their continuations ride along, up to 4 rows per document on
    average); requests with nothing to share count one each. ``share_prefix=False`` runs every
    request whole, in one pass each. With ``on_scored``, each batch's request indices go to it
    instead of a progress call (batches mix documents of several tasks, longest first).
    """
    if max_length is None:
        max_length = model_max_length(model.config)
    device = next(model.parameters()).device
    items: list[tuple[list[int], list[int]]] = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation must have at least one token")
        seq = (list(ctx) + list(cont))[-(max_length + 1) :]
        items.append((seq[:-1], list(cont)[-max_length:]))
    if groups is None:
        groups = [[i] for i in range(len(items))]
    units = _plan(items, groups, share_prefix)
    units.sort(key=lambda u: -u.length)
    out = [math.nan] * len(items)
    # Splitting pays only when a prefix serves several distinct rows.
    cached = [u for u in units if u.prefix and len(u.rows) > 1]
    plain = [u for u in units if not (u.prefix and len(u.rows) > 1)]
    # A cached batch holds ``batch_size`` documents: their prefixes run as one pass of batch_size rows,
    # their (short) continuations as one pass of up to 4 x batch_size rows. Fewer, fuller passes
    # matter more than tokens for a small model, on a CPU as on a GPU.
    batches = [(True, b) for b in _batches(cached, batch_size, ROWS_PER_DOCUMENT)]
    batches += [(False, b) for b in _batches(plain, batch_size)]
    done = 0
    for with_cache, batch in batches:
        hooks.check()
        if with_cache:
            _run_cached(model, batch, device, out)
        else:
            _run_plain(model, batch, device, out)
        done += sum(u.num_requests for u in batch)
        if on_scored is not None:  # the caller reports (per task, in documents)
            on_scored([request for u in batch for reqs in u.rows.values() for request, _ in reqs])
        else:
            hooks.progress(done, len(items), "scoring")
    return out
