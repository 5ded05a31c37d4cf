"""The attention-output refit (`refit_model(attention=True)`): across the pre-norm families of the
architecture matrix, an attention output projection that was perturbed is restored exactly; the refit
never raises the mid-state error it minimises (checked against hooks on the stock modules); the
family data files name a real attention output projection; post-norm encoders keep the down-only refit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.fold import _set_bias, _set_weight, weight_matrix
from prune.repair import repair_cut
from prune.repair.refit import cut_correspondence, refit_model
from prune.surgery import remove_blocks
from tests.test_refit import _stream_error
from tests.test_repair import _batches, _output
from tests.tiny_models import TINY_FAMILIES, assert_reloads_stock, build_tiny

PRE_NORM = [
    f for f in TINY_FAMILIES if getattr(get_anatomy(build_tiny(f)).mlp, "residual", None) == "pre_norm"
]


def _perturb_attention(model, blocks: list[int], seed: int = 0) -> None:
    anatomy = get_anatomy(model)
    generator = torch.Generator().manual_seed(seed)
    for b in blocks:
        module = anatomy.mlp.parts(anatomy.blocks(model)[b]).attention_out
        weight = weight_matrix(module).detach().double()
        noise = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        _set_weight(module, weight + 0.5 * weight.std() * noise)
        if isinstance(getattr(module, "bias", None), torch.Tensor):
            _set_bias(module, module.bias.detach().double() + 0.1)


def test_the_pre_norm_matrix_is_covered():
    assert {"gpt2", "gpt_neox", "opt", "llama", "mistral", "qwen2", "qwen3", "phi3", "falcon"} <= set(
        PRE_NORM
    )


@pytest.mark.parametrize("family", PRE_NORM)
def test_attention_refit_restores_perturbed_attention_outputs_exactly(family):
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    parts = anatomy.mlp.parts(anatomy.blocks(model)[0])
    # the family file's attention output is a projection d_attn -> d that writes the residual stream
    assert weight_matrix(parts.attention_out).shape[0] == model.config.hidden_size
    modified = copy.deepcopy(model)
    _perturb_attention(modified, [1, 3])
    reference = _output(model, family)
    assert not torch.allclose(_output(modified, family), reference, atol=1e-3)
    report = refit_model(model, modified, _batches(family), blocks=[1, 3], ridge=1e-12, attention=True)
    fitted = [(b.block, b.projection) for b in report.blocks]
    assert fitted == [(1, "attention"), (1, "down"), (3, "attention"), (3, "down")]
    for block in report.blocks:
        if block.projection == "attention":
            assert block.residual_after < 1e-8 < block.residual_before
        assert block.residual_after <= block.residual_before
    torch.testing.assert_close(_output(modified, family), reference, atol=1e-4, rtol=1e-4)


def _mid_error(model, modified, k: int, target: int, family: str) -> float:
    """||mid_k - mid*_target||^2 / ||mid*||^2: the post-attention norm's input (Llama)."""
    return _stream_error(model, modified, family, k, target, norm_input="post_attention_layernorm")


@pytest.mark.parametrize("ridge", [None, 1e-3, 1.0])
def test_attention_refit_never_raises_the_error_it_minimises(ridge):
    family = "llama"
    model = build_tiny(family)
    drop = [2, 3]
    pruned = remove_blocks(model, drop, share_weights=True)
    repair_cut(model, pruned, drop, _batches(family), method="linear", progress=False)
    correspondence = cut_correspondence(6, drop)
    # block 2 of the cut model stands for original block 4: its mid-state tracks original block 4's
    before = _mid_error(model, pruned, 2, 4, family)
    report = refit_model(
        model,
        pruned,
        _batches(family),
        correspondence=correspondence,
        blocks=[2],
        ridge=ridge,
        attention=True,
    )
    attention = report.blocks[0]
    assert (attention.block, attention.target, attention.projection) == (2, 4, "attention")
    assert attention.residual_before == pytest.approx(before, rel=1e-3)
    # the attention refit is folded before the down refit, which does not touch the mid-state
    after = _mid_error(model, pruned, 2, 4, family)
    assert after <= before
    assert attention.residual_after == pytest.approx(after, rel=1e-3)
    assert report.blocks[1].projection == "down"
    assert all(b.residual_after <= b.residual_before for b in report.blocks)


@pytest.mark.parametrize(("junction", "fitted"), [("own", [(1, 1)]), ("next", [(1, 2)]), ("skip", [])])
def test_the_junction_blocks_attention_target(junction, fitted):
    model = build_tiny("llama")
    drop = [2, 3]
    pruned = remove_blocks(model, drop, share_weights=True)
    report = refit_model(
        model,
        pruned,
        _batches("llama"),
        correspondence=cut_correspondence(6, drop),
        blocks=[1],
        attention=True,
        junction_attention=junction,
    )
    assert [(b.block, b.target) for b in report.blocks if b.projection == "attention"] == fitted
    assert [(b.block, b.target) for b in report.blocks if b.projection == "down"] == [(1, 3)]


def test_post_norm_encoders_keep_the_down_only_refit():
    model = build_tiny("bert")
    modified = copy.deepcopy(model)
    report = refit_model(model, modified, _batches("bert", count=2), blocks=[1], attention=True)
    assert [b.projection for b in report.blocks] == ["down"]
    assert report.attention_skipped and "pre-norm" in report.attention_skipped


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attention_refitted_cut_reloads_with_stock_auto_class(family, tmp_path):
    model = build_tiny(family)
    drop = [2, 3]
    pruned = remove_blocks(model, drop, share_weights=True)
    report = repair_cut(
        model,
        pruned,
        drop,
        _batches(family, count=4),
        method="linear",
        progress=False,
        refit=True,
        refit_attention=True,
    )
    assert any(b["projection"] == "attention" for b in report.refit["blocks"])
    assert_reloads_stock(pruned, family, tmp_path, _output(pruned, family), lambda m: _output(m, family))


def test_the_default_refit_of_a_cut_refits_attention_and_the_card_says_so(
    tiny_llama_folder, word_text_file, tmp_path
):
    from prune.cli.main import main
    from tests.test_stages import FAST_FLAGS, _report

    out = tmp_path / "out"
    flags = ["--target", "drop-1", "--strategy", "span", "--calib", word_text_file, "--eval", "none"]
    assert main([tiny_llama_folder, *flags, *FAST_FLAGS, "--out", str(out), "--quiet"]) == 0
    refit = _report(out)["repair"]["refit"]
    assert refit is not None and {b["projection"] for b in refit["blocks"]} == {"attention", "down"}
    assert "| attention |" in (out / "README.md").read_text()


def test_no_refit_attention_is_a_recipe_key_and_a_flag():
    import argparse

    from prune.cli.flags import add_option_flags, options_from_args
    from prune.options import PruneOptions

    assert PruneOptions(model="m", target="drop-1").refit_attention is True
    parser = argparse.ArgumentParser()
    add_option_flags(parser, overrides_only=True)
    options = options_from_args(
        parser.parse_args(["--model", "m", "--target", "drop-1", "--no-refit-attention"])
    )
    assert options.refit_attention is False
