"""Distillation healing (docs/methods.md §7): the pruned student learns from the unpruned teacher.

Per optimizer step the loss is

    alpha·tau²·KL/N + (1 − alpha)·CE/N_ce + beta·(1 − cos)/N

* KL: KL(softmax(z_teacher/tau) ‖ softmax(z_student/tau)) summed over every position whose next
  token is real (prompt tokens included: distillation needs no labels), N of them in the step;
* CE: the LM loss exactly as the ``lm`` objective computes it (its label mask, N_ce targets);
* cos: cosine between the student's and the teacher's *final hidden state* — the output of the
  last decoder layer, the residual stream entering the final norm — at the same N positions.
  Whatever runs of layers were removed, the student's last layer stands where the teacher's last
  layer stood; it is also the one hidden state that every trainable set (partial's last layers,
  LoRA, full) can move, and it needs no map of which layers went.

The teacher's targets are the logits minus their per-position maximum, in float16 (exact enough:
the spacing is 2⁻¹⁰ of the gap to the top logit), over the ``top_k`` largest logits (softmax
renormalised over them) or the whole vocabulary. They are encoded this way whether or not they are
cached, so a cached and an uncached run optimise the same objective. In a partial run with the
frozen-trunk cache they are computed once per micro-batch and kept beside the trunk activations;
once every micro-batch has them the teacher itself is released.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from layerprune.core.architecture import find_decoder_parts, text_config
from layerprune.core.errors import SpecError
from layerprune.core.finetune.trunk_cache import TrunkCache
from layerprune.core.hooks import Hooks
from layerprune.core.loading import weights_bytes
from layerprune.core.spec import FinetuneSpec

TARGET_DTYPE = torch.float16
# Masked vocabulary entries (-inf logits) become a large finite gap: exp(-1e4/tau) is 0 anyway.
LOGIT_FLOOR = -1e4


@dataclass
class Targets:
    """The teacher's view of one micro-batch."""

    values: torch.Tensor  # [B, T, K or V]: logits minus their per-position max, float16
    indices: torch.Tensor | None  # [B, T, K] int32 vocabulary ids; None: the whole vocabulary
    hidden: torch.Tensor | None  # [B, T, H] output of the teacher's last layer (beta > 0 only)


def encode_logits(logits: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stored form of teacher logits: top-k (or all), shifted by the max, in float16."""
    logits = logits.float()
    if top_k is None:
        values, indices = logits, None
    else:
        values, idx = logits.topk(top_k, dim=-1)
        indices = idx.to(torch.int32)
    values = (values - values.amax(dim=-1, keepdim=True)).clamp(min=LOGIT_FLOOR)
    return values.to(TARGET_DTYPE), indices


def distill_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: position t counts when tokens t and t+1 are both real (not padding)."""
    real = attention_mask.bool()
    return real[:, :-1] & real[:, 1:]


def positions_of(example: dict[str, list[int]]) -> int:
    """Positions of one example the KL and hidden terms cover (every token that has a next one)."""
    return len(example["input_ids"]) - 1


def kl_sum(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor | None, tau: float,
           mask: torch.Tensor) -> torch.Tensor:
    """Σ over masked positions of KL(p_teacher ‖ p_student) at temperature ``tau``.

    Logits are [B, T, ·] aligned with the input (position t predicts token t+1); the last position
    is dropped. With ``indices`` the teacher's distribution is its softmax over its top k logits
    (zero elsewhere) and the student's log-probabilities, normalised over the whole vocabulary,
    are read at those k ids.
    """
    log_s = F.log_softmax(student_logits[:, :-1].float() / tau, dim=-1)
    log_t = F.log_softmax(values[:, :-1].float() / tau, dim=-1)
    if indices is not None:
        log_s = log_s.gather(-1, indices[:, :-1].long())
    per_position = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return (per_position * mask).sum()


def hidden_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over masked positions of 1 − cos(student, teacher) (hidden states [B, T, H])."""
    cos = F.cosine_similarity(student[:, :-1].float(), teacher[:, :-1].float(), dim=-1)
    return ((1.0 - cos) * mask).sum()


@contextlib.contextmanager
def capture_output(layer: nn.Module | None) -> Iterator[dict[str, torch.Tensor]]:
    """While active, ``box["hidden"]`` receives ``layer``'s output (with its autograd graph)."""
    box: dict[str, torch.Tensor] = {}
    if layer is None:
        yield box
        return

    def hook(_m: nn.Module, _a: tuple[Any, ...], output: Any) -> None:
        box["hidden"] = output[0] if isinstance(output, tuple) else output

    handle = layer.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


class Distiller:
    """The teacher, its cached targets and the weighting of the loss terms."""

    def __init__(self, teacher: nn.Module, spec: FinetuneSpec, student_last_layer: nn.Module,
                 device: torch.device, hooks: Hooks, *, cache_shapes: dict[int, tuple[int, int]] | None = None,
                 work_dir: Path | None = None, memory_limit: int = 0) -> None:
        self.teacher: nn.Module | None = teacher
        self.teacher_last_layer: nn.Module | None = find_decoder_parts(teacher).layers[-1]
        self.student_last_layer = student_last_layer
        self.tau = spec.distill_temperature
        self.alpha = spec.distill_alpha
        self.beta = spec.distill_hidden_weight
        self.top_k = spec.distill_top_k
        self.device = device
        self.hooks = hooks
        self.hits = 0
        self.caches: dict[str, TrunkCache] = {}
        if cache_shapes is None:
            return
        config = text_config(teacher.config)  # type: ignore[attr-defined]
        width = int(config.vocab_size) if self.top_k is None else self.top_k
        names = {"teacher_values": width}
        if self.top_k is not None:
            names["teacher_indices"] = width
        if self.beta > 0:
            names["teacher_hidden"] = int(config.hidden_size)
        if self.top_k is None:
            tokens = sum(b * t for b, t in cache_shapes.values())
            need = tokens * width * torch.empty((), dtype=TARGET_DTYPE).element_size()
            if need > memory_limit:
                # Whole-vocabulary targets are vocab/k times the size of top-k ones: not worth a disk file.
                hooks.info(f"teacher targets over the whole vocabulary would take {need / 2**30:.2f} GiB, more "
                           "than the cache's memory limit: the teacher runs every step (set distill_top_k to "
                           "cache them)", bytes=need)
                return
        for name, width in names.items():
            shapes = {i: (b, t, width) for i, (b, t) in cache_shapes.items()}
            self.caches[name] = TrunkCache(shapes, device, work_dir, memory_limit, name=name)

    @property
    def cached(self) -> bool:
        return bool(self.caches)

    def _run_teacher(self, batch: dict[str, torch.Tensor]) -> Targets:
        assert self.teacher is not None
        with torch.no_grad(), capture_output(self.teacher_last_layer if self.beta > 0 else None) as box:
            logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  use_cache=False).logits
        values, indices = encode_logits(logits, self.top_k)
        hidden = box["hidden"].detach() if self.beta > 0 else None
        return Targets(values, indices, hidden)

    def targets(self, index: int, batch: dict[str, torch.Tensor]) -> Targets:
        """The teacher's targets for micro-batch ``index``: from the cache, or computed (and cached)."""
        if not self.caches:
            return self._run_teacher(batch)
        if self.caches["teacher_values"].get(index) is None:
            fresh = self._run_teacher(batch)
            first = self.caches["teacher_values"].dtype is None
            self.caches["teacher_values"].put(index, fresh.values)
            if fresh.indices is not None:
                self.caches["teacher_indices"].put(index, fresh.indices)
            if fresh.hidden is not None:
                self.caches["teacher_hidden"].put(index, fresh.hidden)
            if first:
                self.hooks.info("teacher-target cache", bytes=self.nbytes,
                                on_disk=any(c.on_disk for c in self.caches.values()), top_k=self.top_k)
            if all(c.complete for c in self.caches.values()) and self.teacher is not None:
                # Every micro-batch has its targets: later epochs never run the teacher again.
                self.teacher = self.teacher_last_layer = None
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        else:
            self.hits += 1
        # Read back what was stored, hit or miss, so both see bit-identical targets.
        values = self.caches["teacher_values"].get(index)
        assert values is not None
        indices = self.caches["teacher_indices"].get(index) if "teacher_indices" in self.caches else None
        hidden = self.caches["teacher_hidden"].get(index) if "teacher_hidden" in self.caches else None
        return Targets(values, indices, hidden)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches.values())

    def terms(self, index: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
              student_hidden: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(KL sum, hidden sum) of a micro-batch; a term whose weight is 0 is not computed (None)."""
        if self.alpha == 0 and self.beta == 0:
            return None, None
        t = self.targets(index, batch)
        mask = distill_mask(batch["attention_mask"]).to(logits.device)
        kl = kl_sum(logits, t.values, t.indices, self.tau, mask) if self.alpha > 0 else None
        hid = None
        if self.beta > 0:
            assert student_hidden is not None and t.hidden is not None
            hid = hidden_sum(student_hidden, t.hidden, mask)
        return kl, hid

    def combine(self, ce: torch.Tensor, kl: torch.Tensor | None, hid: torch.Tensor | None, targets: int,
                positions: int) -> torch.Tensor:
        """The micro-batch's share of the step's loss (sums divided by the step's counts)."""
        loss = (1.0 - self.alpha) * (ce / max(targets, 1)) if self.alpha < 1 else ce.new_zeros(())
        if kl is not None:
            loss = loss + self.alpha * self.tau**2 * (kl / max(positions, 1))
        if hid is not None:
            loss = loss + self.beta * (hid / max(positions, 1))
        return loss

    def close(self) -> None:
        for c in self.caches.values():
            c.close()
        self.teacher = self.teacher_last_layer = None


def device_memory_bytes(device: torch.device) -> int:
    """Memory of ``device``: the GPU's total, or the host's physical memory for the CPU."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_teacher_fits(teacher_bytes: int, student_bytes: int, device: torch.device, dtype_name: str) -> None:
    """Refuse distillation when the teacher's and the student's weights alone exceed the device."""
    total = device_memory_bytes(device)
    need = teacher_bytes + student_bytes
    if need > total:
        where = "the GPU's" if device.type == "cuda" else "this machine's"
        raise SpecError(
            f"objective 'distill' keeps the teacher (the input model, {teacher_bytes / 2**30:.2f} GiB in {dtype_name}) "
            f"beside the student ({student_bytes / 2**30:.2f} GiB): {need / 2**30:.2f} GiB of weights alone, more "
            f"than {where} {total / 2**30:.2f} GiB; use objective 'lm', method 'qlora' or a larger device",
            param="finetune.objective")


def weights_bytes_as(model_dir: Path, dtype: torch.dtype, quantized: bool) -> int:
    """Bytes of a model's weights once loaded (4-bit NF4 counted as half a byte a parameter)."""
    if quantized:
        return weights_bytes(model_dir, torch.int8) // 2
    return weights_bytes(model_dir, dtype)
