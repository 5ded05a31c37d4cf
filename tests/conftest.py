"""Shared test set-up: everything runs offline, on CPU, deterministically."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402  (after the environment is set: imports below may read it)


@pytest.fixture(scope="session")
def word_text_file(tmp_path_factory) -> str:
    """30 lines of 40 random words w0..w59: calibration and evaluation text for the tiny models."""
    from tests.word_models import write_word_text

    return write_word_text(tmp_path_factory.mktemp("words"))


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory) -> str:
    """A saved 4-block Llama (hidden 32) with the word tokenizer: a stand-in for a Hub checkpoint."""
    from tests.word_models import save_with_tokenizer, word_llama

    return save_with_tokenizer(word_llama(), tmp_path_factory.mktemp("tiny-llama"))
