"""Anatomy: family data files, head classes, generic discovery and user-named block lists."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import transformers
from pydantic import ValidationError
from torch import nn

from prune.anatomy import Anatomy, FamilySpec, get_anatomy, load_families, scan_layer_index_attributes
from prune.errors import AnatomyError
from tests.tiny_models import build_tiny, tiny_config


def _family_files() -> list[str]:
    folder = resources.files("prune.anatomy") / "families"
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".json"))


@pytest.mark.parametrize("name", _family_files())
def test_family_file_is_valid_and_names_real_model_types(name):
    raw = json.loads((resources.files("prune.anatomy") / "families" / name).read_text())
    spec = FamilySpec.model_validate(raw)
    for model_type in spec.model_types:
        assert model_type in transformers.CONFIG_MAPPING, f"{name}: unknown model_type {model_type!r}"
        assert load_families()[model_type] == (name.removesuffix(".json"), spec)


def test_family_spec_rejects_unknown_keys_and_is_frozen():
    good = {"model_types": ["llama"], "block_paths": ["layers"]}
    with pytest.raises(ValidationError, match="layer_idx_attrs"):
        FamilySpec.model_validate({**good, "layer_idx_attrs": ["self_attn.layer_idx"]})
    with pytest.raises(ValidationError):
        FamilySpec.model_validate({**good, "block_paths": ["model..layers"]})
    with pytest.raises(ValidationError):
        FamilySpec.model_validate({"model_types": [], "block_paths": ["layers"]})
    spec = FamilySpec.model_validate(good)
    with pytest.raises(ValidationError):
        spec.block_paths = ("h",)


@pytest.mark.parametrize(
    ("family", "class_name", "block_path"),
    [
        ("llama", "LlamaModel", "layers"),
        ("llama", "LlamaForCausalLM", "model.layers"),
        ("llama", "LlamaForSequenceClassification", "model.layers"),
        ("bert", "BertModel", "encoder.layer"),
        ("bert", "BertForSequenceClassification", "bert.encoder.layer"),
        ("bert", "BertForMaskedLM", "bert.encoder.layer"),
        ("gpt2", "GPT2Model", "h"),
        ("gpt2", "GPT2ForSequenceClassification", "transformer.h"),
        ("opt", "OPTModel", "decoder.layers"),
        ("distilbert", "DistilBertModel", "transformer.layer"),
        ("gemma3_text", "Gemma3TextModel", "layers"),
        ("gemma3", "Gemma3Model", "language_model.layers"),
        ("gemma3", "Gemma3ForConditionalGeneration", "model.language_model.layers"),
    ],
)
def test_block_path_resolves_for_bare_and_head_classes(family, class_name, block_path):
    config = tiny_config(family)
    model = getattr(transformers, class_name)(config)
    anatomy = get_anatomy(model)
    assert anatomy.block_path == block_path
    assert anatomy.num_blocks == 6
    assert anatomy.blocks(model) is model.get_submodule(block_path)
    assert anatomy.family == ("gemma3" if family.startswith("gemma3") else family)


def test_multimodal_gemma3_counts_layers_in_text_config():
    anatomy = get_anatomy(build_tiny("gemma3"))
    assert anatomy.config_path == "text_config"
    assert anatomy.layer_count_key == "num_hidden_layers"
    assert anatomy.per_layer_config_keys == ("layer_types",)
    assert anatomy.layer_index_attributes == ("layer_idx", "self_attn.layer_idx")
    text_only = get_anatomy(build_tiny("gemma3_text"))
    assert (text_only.config_path, text_only.block_path) == ("", "model.layers")


def test_family_attributes_missing_from_a_model_are_left_out():
    # BERT's family file lists crossattention.self.layer_idx, which only decoder BERTs have.
    anatomy = get_anatomy(build_tiny("bert"))
    assert anatomy.layer_index_attributes == ("attention.self.layer_idx",)
    decoder = transformers.BertModel(
        transformers.BertConfig(
            **{**tiny_config("bert").to_dict(), "is_decoder": True, "add_cross_attention": True}
        )
    )
    assert get_anatomy(decoder).layer_index_attributes == (
        "attention.self.layer_idx",
        "crossattention.self.layer_idx",
    )


def test_generic_discovery_for_a_family_without_a_file():
    config = transformers.GemmaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    assert "gemma" not in load_families()
    model = transformers.GemmaForCausalLM(config)
    anatomy = get_anatomy(model)
    assert anatomy.family == "discovered"
    assert (anatomy.block_path, anatomy.num_blocks, anatomy.layer_count_key) == (
        "model.layers",
        5,
        "num_hidden_layers",
    )
    assert anatomy.layer_index_attributes == ("self_attn.layer_idx",)


def test_generic_discovery_uses_attribute_map_aliases():
    # GPT-J counts its layers in n_layer, aliased as num_hidden_layers.
    config = transformers.GPTJConfig(
        vocab_size=128, n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=64
    )
    anatomy = get_anatomy(transformers.GPTJForCausalLM(config))
    assert (anatomy.family, anatomy.block_path, anatomy.num_blocks) == ("discovered", "transformer.h", 3)
    assert anatomy.layer_index_attributes == ("attn.layer_idx",)


def test_ambiguous_discovery_asks_for_block_path():
    config = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = transformers.T5ForConditionalGeneration(config)
    with pytest.raises(
        AnatomyError, match=r"several: encoder\.block, decoder\.block.*block_path=.*--block-path"
    ):
        get_anatomy(model)
    anatomy = get_anatomy(model, block_path="decoder.block")
    assert anatomy.block_path == "decoder.block"
    # num_layers counts the encoder too: surgery must not touch it for a user-named decoder list.
    assert (anatomy.family, anatomy.layer_count_key) == ("custom", None)


def test_family_blocks_inside_a_wrapper_are_found():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = build_tiny("llama")
            self.config = self.inner.config

    wrapper = Wrapper()
    anatomy = get_anatomy(wrapper)
    assert (anatomy.family, anatomy.block_path, anatomy.num_blocks) == ("llama", "inner.model.layers", 6)


def test_config_and_block_list_that_disagree_are_an_error():
    model = build_tiny("llama")
    model.config.num_hidden_layers = 5
    with pytest.raises(AnatomyError, match="6 blocks but config num_hidden_layers=5"):
        get_anatomy(model)


class _Block(nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.layer_id = index
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.linear(x).tanh()


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.trunk = nn.Sequential()
        self.trunk.stack = nn.ModuleList([_Block(i) for i in range(4)])
        self.heads = nn.ModuleList([nn.Linear(8, 2)])


def test_custom_module_without_block_path_names_the_fix():
    with pytest.raises(AnatomyError) as info:
        get_anatomy(_Custom())
    message = str(info.value)
    assert "block_path=" in message and "--block-path" in message
    assert "trunk.stack (4 x _Block)" in message and "heads (1 x Linear)" in message
    assert "\n" not in message


def test_custom_module_with_a_wrong_block_path_lists_the_module_lists():
    with pytest.raises(AnatomyError, match=r"'layers' names nothing.*trunk\.stack \(4 x _Block\)"):
        get_anatomy(_Custom(), block_path="layers")
    with pytest.raises(AnatomyError, match="'embed' names a Linear"):
        get_anatomy(_Custom(), block_path="embed")


def test_custom_module_with_block_path():
    model = _Custom()
    anatomy = get_anatomy(model, block_path="trunk.stack")
    assert anatomy == Anatomy(
        family="custom",
        block_path="trunk.stack",
        num_blocks=4,
        config_path="",
        layer_count_key=None,
        layer_index_attributes=("layer_id",),
    )
    assert anatomy.blocks(model) is model.trunk.stack


def test_layer_index_scan_ignores_ints_that_are_not_positions():
    blocks = nn.ModuleList([_Block(i) for i in range(3)])
    for block in blocks:
        block.linear.layer_idx = 7  # same name, but not the block's position
    assert scan_layer_index_attributes(blocks) == ("layer_id",)


def test_anatomy_blocks_errors_when_the_model_changed():
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    with pytest.raises(AnatomyError, match="get_anatomy"):
        anatomy.blocks(build_tiny("bert"))
