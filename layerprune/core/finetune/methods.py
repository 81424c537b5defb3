"""Which parameters each healing method trains (docs/methods.md §3).

* ``partial`` (the paper's default): lm_head + final norm + the last ``k`` remaining layers; all
  else frozen. With tied input/output embeddings (SmolLM2, Gemma) training lm_head would also
  change the input embeddings, so we untie explicitly: lm_head gets its own copy of the shared
  matrix and the config says ``tie_word_embeddings=false`` (the exported model then stores both
  matrices). With ``train_lm_head=false`` lm_head stays frozen and nothing is untied.
* ``lora`` / ``qlora``: only the LoRA adapters (:mod:`.lora`).
* ``full``: every parameter (tied embeddings stay tied and train as one matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from layerprune.core.architecture import find_decoder_parts, text_config
from layerprune.core.errors import SpecError
from layerprune.core.spec import FinetuneSpec


@dataclass
class PartialPlan:
    """The frozen-trunk boundary of a partial run: the trunk (frozen layers) ends where
    ``cache_point`` begins; hidden states entering ``cache_point`` depend only on the input."""

    frozen_layers: list[nn.Module]
    trainable_layers: list[nn.Module]
    cache_point: nn.Module
    untied: bool = False
    trainable_modules: list[nn.Module] = field(default_factory=list)


def is_tied(model: nn.Module) -> bool:
    parts = find_decoder_parts(model)
    head = getattr(parts.lm_head, "weight", None)
    emb = getattr(parts.embeddings, "weight", None)
    return head is not None and emb is not None and (head is emb or head.data_ptr() == emb.data_ptr())


def untie_embeddings(model: nn.Module) -> bool:
    """Give lm_head its own copy of a tied embedding matrix; returns whether it was tied."""
    if not is_tied(model):
        return False
    parts = find_decoder_parts(model)
    parts.lm_head.weight = nn.Parameter(parts.embeddings.weight.detach().clone())
    config = model.config  # type: ignore[attr-defined]
    config.tie_word_embeddings = False
    text_config(config).tie_word_embeddings = False
    # transformers 5 keeps its own map of tied keys; an empty map stops save/load from re-tying.
    if hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = {}
    return True


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def prepare_partial(model: nn.Module, spec: FinetuneSpec) -> PartialPlan:
    parts = find_decoder_parts(model)
    layers = list(parts.layers)
    k = spec.trainable_last_layers
    if k > len(layers):
        raise SpecError(
            f"trainable_last_layers {k} is more than the {len(layers)} remaining layers",
            param="finetune.trainable_last_layers",
        )
    untied = untie_embeddings(model) if spec.train_lm_head else False
    parts = find_decoder_parts(model)
    freeze_all(model)
    trainable_layers = layers[len(layers) - k :]
    modules: list[nn.Module] = list(trainable_layers)
    if parts.final_norm is not None:
        modules.append(parts.final_norm)
    if spec.train_lm_head:
        modules.append(parts.lm_head)
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise SpecError(
            "nothing to train: trainable_last_layers is 0, lm_head is frozen and the model has no final norm",
            param="finetune.trainable_last_layers",
        )
    if trainable_layers:
        cache_point: nn.Module = trainable_layers[0]
    elif parts.final_norm is not None:
        cache_point = parts.final_norm
    else:
        cache_point = parts.lm_head
    return PartialPlan(layers[: len(layers) - k], trainable_layers, cache_point, untied, modules)


def prepare_full(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters by name, each once (a shared tensor appears under its first name)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def set_train_mode(model: nn.Module, plan: PartialPlan | None) -> None:
    """Train mode where gradients flow; the frozen trunk of a partial run stays in eval mode so its
    output (and so the trunk cache) does not depend on dropout."""
    if plan is None:
        model.train()
        return
    model.eval()
    for m in plan.trainable_modules:
        m.train()
