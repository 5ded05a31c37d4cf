"""Shared test set-up: everything runs offline, on CPU, deterministically."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402  (after the environment is set: imports below may read it)


def word_tokenizer():
    """A word-level tokenizer for the words w0..w59 (what the tiny models' text files hold)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(60)} | {"[UNK]": 60, "[PAD]": 61, "[CLS]": 62, "</s>": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>"
    )


@pytest.fixture(scope="session")
def word_text_file(tmp_path_factory) -> str:
    """30 lines of 40 random words w0..w59: calibration and evaluation text for the tiny models."""
    import torch

    g = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 60, (40,), generator=g)) for _ in range(30)]
    path = tmp_path_factory.mktemp("words") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory) -> str:
    """A saved 4-block Llama (hidden 32) with the word tokenizer: a stand-in for a Hub checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=63,
        pad_token_id=61,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return str(folder)
