"""Tiny random decoder models of every supported family, built offline for tests.

Each has 8 layers and hidden size 64 (docs/data.md, "Test-sized models"), a 512-token byte-level BPE tokenizer
trained on bundled text, and is saved as a plain Hugging Face directory (safetensors).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 512
LAYERS = 8
HIDDEN = 64

_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _configs() -> dict[str, object]:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    return {
        "llama": LlamaConfig(**_COMMON),
        "mistral": MistralConfig(**_COMMON),
        "qwen2": Qwen2Config(**_COMMON),
        "qwen3": Qwen3Config(**_COMMON, head_dim=16),
        "gemma2": Gemma2Config(**_COMMON, head_dim=16),
        "gemma3": Gemma3TextConfig(**_COMMON, head_dim=16),
        "phi3": Phi3Config(**_COMMON),
        "olmo2": Olmo2Config(**_COMMON),
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=512,
                           bos_token_id=1, eos_token_id=2, pad_token_id=2),
        "gpt_neox": GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, intermediate_size=128, max_position_embeddings=512,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=2),
    }


FAMILIES = tuple(_configs())


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from layerprune.core.bundled import bundled_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(bundled_text("wikipedia-train")[:400], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    return fast


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_configs()[family], dtype=dtype)
    model.eval()
    return model


def save_tiny(path: Path, family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Build and save a tiny model with its tokenizer under ``path``; returns ``path``."""
    model = tiny_model(family, seed, dtype)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path
