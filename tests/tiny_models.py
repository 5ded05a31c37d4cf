"""Tiny randomly initialised models for every supported family, built from configs (no downloads).

Each model has a hidden size of 32-64, 4-6 blocks and a small vocabulary, is seeded and in eval mode, so
the architecture matrix runs in seconds on a CPU. Families with per-layer attention types (Gemma2/3,
Qwen2/3) mix sliding and full layers with a small window, so that sliding attention matters within a
short generation.

Example:
    >>> from tests.tiny_models import build_tiny
    >>> model = build_tiny("llama")
    >>> model.config.num_hidden_layers
    6
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers

VOCAB = 128
SLIDING_WINDOW = 4
NUM_LAYERS = 6

# Mixed on purpose: dropping blocks 1 and 3 from it must keep every kept layer's own type.
MIXED_LAYER_TYPES = [
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
]


@dataclass(frozen=True)
class TinySpec:
    """How to build one tiny family: its config, the model class and the stock Auto class to reload it."""

    config: Callable[[], Any]
    model_class: str
    auto_class: str
    decoder: bool
    sliding: bool = False


def _decoder_common(**extra: Any) -> dict[str, Any]:
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    common.update(extra)
    return common


def _encoder_common(**extra: Any) -> dict[str, Any]:
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
    }
    common.update(extra)
    return common


def _sliding(**extra: Any) -> dict[str, Any]:
    return _decoder_common(
        sliding_window=SLIDING_WINDOW, layer_types=list(MIXED_LAYER_TYPES), head_dim=8, **extra
    )


def _gemma3_multimodal() -> Any:
    text = transformers.Gemma3TextConfig(**_sliding(rope_local_base_freq=10000.0))
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
    )
    return transformers.Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 2,
        eoi_token_index=VOCAB - 3,
    )


TINY_SPECS: dict[str, TinySpec] = {
    "bert": TinySpec(
        lambda: transformers.BertConfig(**_encoder_common()), "BertModel", "AutoModel", decoder=False
    ),
    "roberta": TinySpec(
        lambda: transformers.RobertaConfig(**_encoder_common(pad_token_id=1)),
        "RobertaForMaskedLM",
        "AutoModelForMaskedLM",
        decoder=False,
    ),
    "distilbert": TinySpec(
        lambda: transformers.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            hidden_dim=64,
            n_layers=NUM_LAYERS,
            n_heads=4,
            max_position_embeddings=64,
        ),
        "DistilBertForSequenceClassification",
        "AutoModelForSequenceClassification",
        decoder=False,
    ),
    "electra": TinySpec(
        lambda: transformers.ElectraConfig(**_encoder_common(embedding_size=16)),
        "ElectraModel",
        "AutoModel",
        decoder=False,
    ),
    "mpnet": TinySpec(
        lambda: transformers.MPNetConfig(**_encoder_common(pad_token_id=1)), "MPNetModel", "AutoModel", False
    ),
    "gpt2": TinySpec(
        lambda: transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=NUM_LAYERS,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "GPT2LMHeadModel",
        "AutoModelForCausalLM",
        decoder=True,
    ),
    "gpt_neox": TinySpec(
        lambda: transformers.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "GPTNeoXForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
    ),
    "opt": TinySpec(
        lambda: transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            ffn_dim=64,
            word_embed_proj_dim=32,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "OPTForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
    ),
    "llama": TinySpec(
        lambda: transformers.LlamaConfig(**_decoder_common()),
        "LlamaForCausalLM",
        "AutoModelForCausalLM",
        True,
    ),
    "mistral": TinySpec(
        lambda: transformers.MistralConfig(**_decoder_common(sliding_window=None)),
        "MistralForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
    ),
    "qwen2": TinySpec(
        lambda: transformers.Qwen2Config(**_sliding(use_sliding_window=True, max_window_layers=2)),
        "Qwen2ForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
        sliding=True,
    ),
    "qwen3": TinySpec(
        lambda: transformers.Qwen3Config(**_sliding(use_sliding_window=True, max_window_layers=2)),
        "Qwen3ForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
        sliding=True,
    ),
    "gemma2": TinySpec(
        lambda: transformers.Gemma2Config(**_sliding()),
        "Gemma2ForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
        sliding=True,
    ),
    "gemma3_text": TinySpec(
        lambda: transformers.Gemma3TextConfig(**_sliding(rope_local_base_freq=10000.0)),
        "Gemma3ForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
        sliding=True,
    ),
    "gemma3": TinySpec(
        _gemma3_multimodal,
        "Gemma3ForConditionalGeneration",
        "AutoModelForImageTextToText",
        decoder=True,
        sliding=True,
    ),
    "phi3": TinySpec(
        lambda: transformers.Phi3Config(**_decoder_common(sliding_window=None)),
        "Phi3ForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
    ),
    "falcon": TinySpec(
        lambda: transformers.FalconConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "FalconForCausalLM",
        "AutoModelForCausalLM",
        decoder=True,
    ),
}

TINY_FAMILIES: list[str] = sorted(TINY_SPECS)
DECODER_FAMILIES: list[str] = [name for name in TINY_FAMILIES if TINY_SPECS[name].decoder]
ENCODER_FAMILIES: list[str] = [name for name in TINY_FAMILIES if not TINY_SPECS[name].decoder]
SLIDING_FAMILIES: list[str] = [name for name in TINY_FAMILIES if TINY_SPECS[name].sliding]


def tiny_config(family: str) -> Any:
    """A fresh tiny config for `family` (one of TINY_FAMILIES)."""
    config = TINY_SPECS[family].config()
    # Eager attention everywhere: sliding windows and sdpa masks must not make cached and uncached
    # decoding differ for reasons that have nothing to do with pruning.
    config._attn_implementation = "eager"
    for name in ("text_config", "vision_config"):
        sub = getattr(config, name, None)
        if sub is not None:
            sub._attn_implementation = "eager"
    return config


def build_tiny(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    """Build the tiny model of `family`, seeded and in eval mode.

    Args:
        family: One of TINY_FAMILIES.
        seed: Seed for the random weights.

    Example:
        >>> build_tiny("bert").config.num_hidden_layers
        6
    """
    spec = TINY_SPECS[family]
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(tiny_config(family))
    return model.eval()


def auto_class(family: str) -> type:
    """The stock transformers Auto class that reloads a saved tiny model of `family`."""
    return getattr(transformers, TINY_SPECS[family].auto_class)


def is_decoder(family: str) -> bool:
    """Whether `family` is a causal LM (generation tests apply)."""
    return TINY_SPECS[family].decoder


def sample_input_ids(family: str, length: int = 8, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random token ids that avoid the special ids (0-3) and the image tokens of multimodal configs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB - 4, (batch, length), generator=generator)


def assert_reloads_stock(
    model: torch.nn.Module, family: str, folder: Any, expected: torch.Tensor, output: Callable
) -> None:
    """Save `model` to `folder` and reload it with the stock Auto class of `family`.

    The reloaded model's ``output(model)`` must equal `expected`, and, for decoders, greedy generation with
    the KV cache must equal generation without it.
    """
    model.save_pretrained(folder)
    reloaded = auto_class(family).from_pretrained(folder).eval()
    torch.testing.assert_close(output(reloaded), expected, atol=1e-5, rtol=1e-5)
    if is_decoder(family):
        ids = sample_input_ids(family, length=6, batch=1)
        kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        with torch.no_grad():
            cached = reloaded.generate(ids, use_cache=True, **kwargs)
            uncached = reloaded.generate(ids, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached)
