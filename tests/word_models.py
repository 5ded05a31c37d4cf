"""The word-level test world: a tokenizer over the words w0..w59, random texts of them, and tiny Llamas
that read them (saved with the tokenizer when a test needs a checkpoint folder).

Example:
    >>> from tests.word_models import word_llama, word_texts
    >>> word_llama(layers=2).config.num_hidden_layers, len(word_texts(3))
    (2, 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = 60  # w0..w59; the specials take ids 60-63


def word_tokenizer():
    """A word-level tokenizer for w0..w59 plus [UNK] 60, [PAD] 61, [CLS] 62 and </s> 63, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(WORDS)} | {"[UNK]": 60, "[PAD]": 61, "[CLS]": 62, "</s>": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>"
    )


def word_texts(n: int = 30, words: int = 40, seed: int = 0) -> list[str]:
    """`n` lines of `words` random words (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, WORDS, (words,), generator=g)) for _ in range(n)]


def write_word_text(folder: Path, n: int = 30, name: str = "text.txt") -> str:
    """`word_texts(n)` written one per line to ``folder / name``; returns the path."""
    path = Path(folder) / name
    path.write_text("\n".join(word_texts(n)) + "\n")
    return str(path)


def word_llama(layers: int = 4, seed: int = 0, **config: Any):
    """A seeded tiny Llama (hidden 32, FFN 64, 4 heads, 2 KV heads, vocab 64) in eval mode.

    Args:
        layers: Number of blocks.
        seed: Torch seed for the weights.
        **config: `LlamaConfig` fields that differ from these defaults.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    values: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "eos_token_id": 63,
        "pad_token_id": 61,
        "max_position_embeddings": 64,
    }
    return LlamaForCausalLM(LlamaConfig(**(values | config))).eval()


def save_with_tokenizer(model: torch.nn.Module, folder: Path, tokenizer: bool = True) -> str:
    """Save `model` (and the word tokenizer unless `tokenizer` is False) to `folder`; returns its path."""
    model.save_pretrained(folder)
    if tokenizer:
        word_tokenizer().save_pretrained(folder)
    return str(folder)
