"""The architecture matrix: every supported family, cut, saved, reloaded with stock classes, generated.

Each test builds a tiny model from a config (tests/tiny_models.py), removes blocks 1 and 3 of 6 and
checks one of the design invariants: a pruned model is a stock checkpoint (1), decoders still generate
with the KV cache (2), surgery equals a model built by hand from the kept blocks (3), the original is
untouched (5), and `blocks_skipped` is `remove_blocks` without the copy.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.surgery import blocks_skipped, remove_blocks
from tests.tiny_models import (
    DECODER_FAMILIES,
    SLIDING_FAMILIES,
    SLIDING_WINDOW,
    TINY_FAMILIES,
    auto_class,
    build_tiny,
    is_decoder,
    sample_input_ids,
)

DROP = (1, 3)
KEEP = (0, 2, 4, 5)
LAYER_INDEX_NAME = re.compile(r"^layer_(idx|id|number|index)$")


def _output(model: torch.nn.Module, family: str, input_ids: torch.Tensor) -> torch.Tensor:
    kwargs = {"use_cache": False} if is_decoder(family) else {}
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _tied(model: torch.nn.Module) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def _layer_config_dict(config_dict: dict, anatomy) -> dict:
    for part in filter(None, anatomy.config_path.split(".")):
        config_dict = config_dict[part]
    return config_dict


@pytest.fixture(scope="module")
def pruned_models() -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """(original, pruned) per family, built once for the whole matrix."""
    return {family: _build_pair(family) for family in TINY_FAMILIES}


def _build_pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    original = build_tiny(family)
    return original, remove_blocks(original, DROP)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_reload_with_stock_auto_class_gives_same_outputs(family, pruned_models, tmp_path):
    original, pruned = pruned_models[family]
    anatomy = get_anatomy(original)
    pruned.save_pretrained(tmp_path)
    saved = _layer_config_dict(json.loads((tmp_path / "config.json").read_text()), anatomy)
    assert saved[anatomy.layer_count_key] == len(KEEP)
    if "layer_types" in anatomy.per_layer_config_keys:
        assert saved["layer_types"] == [original.config.get_text_config().layer_types[i] for i in KEEP]

    reloaded = auto_class(family).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded) is type(pruned)
    assert len(get_anatomy(reloaded).blocks(reloaded)) == len(KEEP)
    ids = sample_input_ids(family)
    torch.testing.assert_close(
        _output(reloaded, family, ids), _output(pruned, family, ids), rtol=1e-5, atol=1e-5
    )
    if _tied(original):
        assert _tied(pruned) and _tied(reloaded)
        assert pruned.get_input_embeddings().weight is not original.get_input_embeddings().weight


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_greedy_generation_with_cache_equals_without(family, pruned_models):
    _, pruned = pruned_models[family]
    prompt = sample_input_ids(family, length=5, batch=1)
    new_tokens = 2 * prompt.shape[1]  # past twice the prompt, and past the sliding window of 4
    assert prompt.shape[1] + new_tokens > 2 * SLIDING_WINDOW
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    mask = torch.ones_like(prompt)
    with torch.no_grad():
        cached = pruned.generate(prompt, attention_mask=mask, use_cache=True, **settings)
        uncached = pruned.generate(prompt, attention_mask=mask, use_cache=False, **settings)
    assert cached.shape == (prompt.shape[0], prompt.shape[1] + new_tokens)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", SLIDING_FAMILIES)
def test_each_kept_layer_keeps_its_attention_type(family, pruned_models):
    original, pruned = pruned_models[family]
    old_types = list(original.config.get_text_config().layer_types)
    assert len(set(old_types[i] for i in KEEP)) == 2, "the tiny config must keep both kinds of layer"
    new_types = list(pruned.config.get_text_config().layer_types)
    assert new_types == [old_types[i] for i in KEEP]
    for block, layer_type in zip(get_anatomy(pruned).blocks(pruned), new_types, strict=True):
        sliding = layer_type == "sliding_attention"
        assert (block.self_attn.sliding_window is not None) == sliding
        if hasattr(block.self_attn, "is_sliding"):
            assert block.self_attn.is_sliding == sliding
    text_config = pruned.config.get_text_config()
    if hasattr(text_config, "max_window_layers"):
        old_threshold = original.config.get_text_config().max_window_layers
        assert text_config.max_window_layers == sum(1 for i in KEEP if i < old_threshold)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_removing_zero_blocks_is_bitwise_equal(family, pruned_models):
    original, _ = pruned_models[family]
    copy = remove_blocks(original, [])
    assert copy is not original
    ids = sample_input_ids(family)
    assert torch.equal(_output(copy, family, ids), _output(original, family, ids))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pruned_equals_model_built_by_hand_from_kept_blocks(family, pruned_models):
    original, pruned = pruned_models[family]
    anatomy = get_anatomy(original)
    # The hand-built model: a fresh config with the kept layer count and layer types, and the kept
    # blocks' weights renamed to their new positions. Nothing here uses the surgery code.
    config_dict = original.config.to_dict()
    layer_dict = _layer_config_dict(config_dict, anatomy)
    layer_dict[anatomy.layer_count_key] = len(KEEP)
    if layer_dict.get("layer_types"):
        layer_dict["layer_types"] = [layer_dict["layer_types"][i] for i in KEEP]
    config = type(original.config).from_dict(config_dict)
    config._attn_implementation = original.config._attn_implementation
    if hasattr(config, "text_config"):
        config.text_config._attn_implementation = "eager"
    hand_built = type(original)(config).eval()
    prefix = anatomy.block_path + "."
    state = {}
    for key, value in original.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) in KEEP:
                state[f"{prefix}{KEEP.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    hand_built.load_state_dict(state, strict=True)
    ids = sample_input_ids(family)
    torch.testing.assert_close(
        _output(pruned, family, ids), _output(hand_built, family, ids), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_original_model_is_untouched(family):
    original = build_tiny(family)
    state = {key: value.clone() for key, value in original.state_dict().items()}
    config = original.config.to_dict()
    anatomy = get_anatomy(original)
    index_values = [
        [
            getattr(block.get_submodule(a.rpartition(".")[0]), a.rpartition(".")[2])
            for a in anatomy.layer_index_attributes
        ]
        for block in anatomy.blocks(original)
    ]
    pruned = remove_blocks(original, DROP)
    assert len(anatomy.blocks(pruned)) == len(KEEP)
    after = original.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[key], state[key]) for key in state)
    assert original.config.to_dict() == config
    assert get_anatomy(original) == anatomy
    assert [
        [
            getattr(block.get_submodule(a.rpartition(".")[0]), a.rpartition(".")[2])
            for a in anatomy.layer_index_attributes
        ]
        for block in anatomy.blocks(original)
    ] == index_values


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_layer_index_attribute_equals_new_position(family, pruned_models):
    original, pruned = pruned_models[family]
    blocks = get_anatomy(pruned).blocks(pruned)
    found = 0
    # Scan independently of the anatomy: any int attribute named like a layer index, anywhere in a block.
    for position, block in enumerate(blocks):
        for module in block.modules():
            for name, value in vars(module).items():
                if LAYER_INDEX_NAME.match(name) and isinstance(value, int):
                    assert value == position, f"{type(module).__name__}.{name} = {value}, expected {position}"
                    found += 1
    if get_anatomy(original).layer_index_attributes:
        assert found >= len(KEEP)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_blocks_skipped_equals_remove_blocks_and_restores(family, pruned_models):
    original, pruned = pruned_models[family]
    ids = sample_input_ids(family)
    before = _output(original, family, ids)
    config = original.config.to_dict()
    blocks = list(get_anatomy(original).blocks(original))
    with blocks_skipped(original, DROP) as skipped:
        assert skipped is original
        torch.testing.assert_close(
            _output(skipped, family, ids), _output(pruned, family, ids), rtol=0, atol=0
        )
    assert list(get_anatomy(original).blocks(original)) == blocks
    assert original.config.to_dict() == config
    assert torch.equal(_output(original, family, ids), before)


def test_tiny_families_cover_the_issue_matrix():
    required = {
        "bert",
        "roberta",
        "distilbert",
        "electra",
        "mpnet",
        "gpt2",
        "gpt_neox",
        "opt",
        "llama",
        "mistral",
    }
    required |= {"qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3", "phi3", "falcon"}
    assert required <= set(TINY_FAMILIES)
    assert set(SLIDING_FAMILIES) == {"gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3"}
