"""MLP anatomy of every family, the fold primitives, and the residual placement each data file claims.

The placement test is what makes the folds exact: it checks numerically, per family, that the block
output depends on the down projection exactly as the family file says (added to the residual stream,
under a norm after the add, or through a post-MLP norm).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune.anatomy import get_anatomy
from prune.anatomy.mlp import MlpSpec, discover_mlp
from prune.errors import FoldError
from prune.fold import (
    fold_input_map,
    fold_norm_affine,
    fold_output_map,
    select_inputs,
    select_outputs,
    weight_matrix,
)
from tests.tiny_models import TINY_FAMILIES, build_tiny, is_decoder, sample_input_ids

EXPECTED_RESIDUAL = {
    "bert": "post_norm",
    "distilbert": "post_norm",
    "electra": "post_norm",
    "mpnet": "post_norm",
    "roberta": "post_norm",
    "gemma2": "sandwich",
    "gemma3": "sandwich",
    "gemma3_text": "sandwich",
}


def _forward(model: nn.Module, family: str) -> torch.Tensor:
    ids = sample_input_ids(family)
    kwargs = {"use_cache": False} if is_decoder(family) else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _capture(model: nn.Module, family: str, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Outputs (and, for keys ending in ':in', inputs) of the given modules in one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for key, module in modules.items():
        if key.endswith(":in"):
            handles.append(
                module.register_forward_pre_hook(lambda m, a, k=key: seen.__setitem__(k, a[0].clone()))
            )
        else:
            handles.append(
                module.register_forward_hook(
                    # cloned: Falcon adds the attention output into its MLP output in place
                    lambda m, a, o, k=key: seen.__setitem__(
                        k, (o if isinstance(o, torch.Tensor) else o[0]).clone()
                    )
                )
            )
    try:
        _forward(model, family)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_declares_its_mlp(family):
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    mlp = anatomy.require_mlp("this test")
    assert mlp.source == "family"
    assert mlp.residual == EXPECTED_RESIDUAL.get(family, "pre_norm")
    block = anatomy.blocks(model)[0]
    parts = mlp.parts(block)
    d_ff = mlp.intermediate_size(block)
    for projection in parts.inputs:
        rows = weight_matrix(projection).shape[0]
        assert rows == d_ff * (2 if projection is parts.gate_up else 1)
    declared = getattr(anatomy.layer_config(model), mlp.intermediate_size_key)
    assert declared in (d_ff, None)  # GPT-2's n_inner is None when it is 4 * n_embd


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_block_output_depends_on_the_down_projection_as_declared(family):
    """Zeroing block 1's down projection changes its output exactly as the residual placement says."""
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    block = anatomy.blocks(model)[1]
    parts = anatomy.mlp.parts(block)
    watch = {"block": block, "down": parts.down}
    if parts.output_norm is not None:
        watch["norm:in"] = parts.output_norm
    if parts.post_mlp_norm is not None:
        watch["post"] = parts.post_mlp_norm
    before = _capture(model, family, watch)
    with torch.no_grad():
        parts.down.weight.zero_()
        if getattr(parts.down, "bias", None) is not None:
            parts.down.bias.zero_()
    after = _capture(model, family, watch)
    # OPT runs its MLP on [batch * tokens, d]: compare token rows
    before = {k: v.reshape(-1, v.shape[-1]) for k, v in before.items()}
    after = {k: v.reshape(-1, v.shape[-1]) for k, v in after.items()}
    residual = anatomy.mlp.residual
    if residual == "pre_norm":
        torch.testing.assert_close(before["block"] - after["block"], before["down"], atol=1e-5, rtol=1e-4)
    elif residual == "post_norm":
        torch.testing.assert_close(before["norm:in"] - after["norm:in"], before["down"], atol=1e-5, rtol=1e-4)
    else:  # sandwich: h + post_norm(down); a zero down output gives post_norm(0) = 0
        torch.testing.assert_close(before["block"] - after["block"], before["post"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_identity_folds_change_nothing(family):
    model = build_tiny(family)
    reference = _forward(model, family)
    anatomy = get_anatomy(model)
    for block in anatomy.blocks(model):
        parts = anatomy.mlp.parts(block)
        d = weight_matrix(parts.down).shape[0]
        d_ff = weight_matrix(parts.down).shape[1]
        fold_output_map(parts.down, torch.eye(d, dtype=torch.float64))
        fold_input_map(parts.down, torch.eye(d_ff, dtype=torch.float64))
        everything = torch.arange(d_ff)
        for projection in parts.inputs:
            select_outputs(projection, everything, fused_halves=2 if projection is parts.gate_up else 1)
        select_inputs(parts.down, everything)
        for norm in (parts.output_norm, parts.post_mlp_norm):
            if norm is not None:
                fold_norm_affine(
                    norm,
                    torch.ones(d, dtype=torch.float64),
                    torch.zeros(d, dtype=torch.float64) if getattr(norm, "bias", None) is not None else None,
                    weight_offset=anatomy.mlp.norm_weight_offset,
                )
    torch.testing.assert_close(_forward(model, family), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_fold_output_and_input_maps_are_exact(layout):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    proj = nn.Linear(6, 4) if layout == "linear" else Conv1D(4, 6)
    with torch.no_grad():
        proj.bias.normal_()
    x = torch.randn(10, 6)
    t = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(3, dtype=torch.float64)
    expected = proj(x).double() @ t + c
    fold_output_map(proj, t, c)
    torch.testing.assert_close(proj(x).double(), expected, atol=1e-5, rtol=1e-5)
    assert weight_matrix(proj).shape == (3, 6)

    proj = nn.Linear(6, 4) if layout == "linear" else Conv1D(4, 6)
    z = torch.randn(10, 2)
    a = torch.randn(2, 6, dtype=torch.float64)
    offset = torch.randn(6, dtype=torch.float64)
    expected = proj((z.double() @ a + offset).float()).double()
    fold_input_map(proj, a, offset)
    torch.testing.assert_close(proj(z).double(), expected, atol=1e-5, rtol=1e-5)


def test_select_outputs_keeps_both_halves_of_a_fused_projection():
    proj = nn.Linear(3, 8)
    x = torch.randn(5, 3)
    full = proj(x)
    select_outputs(proj, torch.tensor([2, 0]), fused_halves=2)
    torch.testing.assert_close(proj(x), full[:, [2, 0, 6, 4]])


def test_norm_fold_respects_gemma_offset():
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

    norm = Gemma2RMSNorm(4)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 4)
    scale = torch.tensor([0.5, 2.0, -1.0, 3.0], dtype=torch.float64)
    expected = norm(x).double() * scale
    fold_norm_affine(norm, scale, weight_offset=1.0)
    torch.testing.assert_close(norm(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_folds_refuse_what_they_cannot_hold():
    no_bias = nn.Linear(3, 2, bias=False)
    with pytest.raises(FoldError, match="no bias"):
        fold_output_map(no_bias, torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(FoldError, match="no bias"):
        fold_input_map(no_bias, torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(FoldError, match="pass a \\[2, k\\] matrix"):
        fold_output_map(no_bias, torch.eye(3, dtype=torch.float64))
    with pytest.raises(FoldError, match="no bias"):
        fold_norm_affine(nn.RMSNorm(2), torch.ones(2), torch.ones(2))
    with pytest.raises(FoldError, match="not a linear projection"):
        weight_matrix(nn.ReLU())


def test_family_mlp_spec_is_validated():
    with pytest.raises(ValueError, match="exactly one of 'up' and 'gate_up'"):
        MlpSpec(down="d", intermediate_size_key="k", residual="pre_norm")
    with pytest.raises(ValueError, match="output_norm"):
        MlpSpec(up="u", down="d", intermediate_size_key="k", residual="post_norm")


def test_discovery_finds_projections_of_an_unknown_family():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = nn.Module()
            self.ffn.fc1, self.ffn.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)

    class Config:
        ffn_dim = 32

    found = discover_mlp(Block(), Config())
    assert (found.up, found.down, found.intermediate_size_key, found.residual) == (
        "ffn.fc1",
        "ffn.fc2",
        "ffn_dim",
        None,
    )
    assert discover_mlp(nn.Linear(3, 3), Config()) is None
