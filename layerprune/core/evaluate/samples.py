"""Sample generations: the model's greedy answer to a few fixed prompts, before and after.

Scores hide what a reader notices first — whether the model still writes sense. A job may list
prompts (``evaluate.samples``); each is rendered with the tokenizer's chat template when it has
one (instruction-tuned models answer a bare question badly without it; ``chat_template: false``
sends the raw text) and answered greedily, so the same model gives the same text every time. The
answers land in the job's metrics beside the scores, and the model card and CLI show them.
"""

from __future__ import annotations

from typing import Any

from layerprune.core.evaluate.generate import greedy_until
from layerprune.core.evaluate.generative import render_chat
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.spec import SamplesSpec


def render_prompt(tokenizer: Any, prompt: str, chat_template: bool | None) -> str:
    """The text the model is given: the chat template's user turn, or the prompt as written."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    if not use_chat:
        return prompt
    return render_chat(tokenizer, [{"role": "user", "content": prompt}])


def generate_samples(model: Any, tokenizer: Any, spec: SamplesSpec, hooks: Hooks = NO_HOOKS) -> list[dict[str, str]]:
    """``[{"prompt", "text"}]``: each prompt's greedy answer, up to ``max_new_tokens``, ended at EOS."""
    contexts = [render_prompt(tokenizer, p, spec.chat_template) for p in spec.prompts]
    # No stop strings but the tokenizer's EOS text: an answer may run over several lines.
    texts = greedy_until(model, tokenizer, contexts, [], max_gen_toks=spec.max_new_tokens,
                         batch_size=len(contexts), hooks=hooks)
    return [{"prompt": p, "text": t.strip()} for p, t in zip(spec.prompts, texts, strict=True)]

