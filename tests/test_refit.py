"""Error-correcting refit (`prune.repair.refit`): exact on planted cases, never worse on what it minimises,
stock checkpoints after it.

The planted cases are built so that the original stream is exactly reachable by refitting down
projections: a cut whose blocks add a linear function of the kept block's d_ff-wide down-projection
input (which a d x d map of the MLP output cannot express), and a model whose down projections were
perturbed (a squeeze-like error in two blocks, the second one downstream of the first).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from prune.anatomy import get_anatomy
from prune.fold import _set_bias, _set_weight, weight_matrix
from prune.repair import RepairError, repair_cut
from prune.repair.refit import cut_correspondence, refit_model
from prune.surgery import remove_blocks
from tests.test_repair import Planted, _batches, _output
from tests.tiny_models import assert_reloads_stock, auto_class, build_tiny


class _PlantedBlock(Planted):
    """A planted block the surgery can renumber (it looks for ``self_attn.layer_idx``)."""

    def __init__(self, fn) -> None:
        super().__init__(fn)
        self.self_attn = nn.Module()


def _perturb_down(model: nn.Module, blocks: list[int], seed: int = 0) -> None:
    anatomy = get_anatomy(model)
    generator = torch.Generator().manual_seed(seed)
    for b in blocks:
        down = anatomy.mlp.parts(anatomy.blocks(model)[b]).down
        weight = weight_matrix(down).detach().double()
        noise = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        _set_weight(down, weight + 0.5 * weight.std() * noise)
        if isinstance(getattr(down, "bias", None), torch.Tensor):
            _set_bias(down, down.bias.detach().double() + 0.1)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_refit_restores_perturbed_down_projections_exactly(family):
    model = build_tiny(family)
    modified = copy.deepcopy(model)
    _perturb_down(modified, [1, 3])
    reference = _output(model, family)
    assert not torch.allclose(_output(modified, family), reference, atol=1e-3)
    # 6 batches x 64 tokens > d_ff + 1 features: the Gram is definite and the planted weights are the
    # unique least-squares solution, whatever the upstream error block 3 sees before block 1 is refitted
    report = refit_model(model, modified, _batches(family), blocks=[1, 3], ridge=1e-12)
    assert [b.block for b in report.blocks] == [1, 3]
    for block in report.blocks:
        assert block.residual_after < 1e-8 < block.residual_before
    torch.testing.assert_close(_output(modified, family), reference, atol=1e-4, rtol=1e-4)


def test_refit_of_the_junction_is_exact_where_a_d_by_d_map_is_not():
    family = "llama"
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    blocks = anatomy.blocks(model)
    kept = 1
    down = anatomy.mlp.parts(blocks[kept]).down
    store: dict = {}
    down.register_forward_pre_hook(lambda m, a: store.__setitem__("z", a[0].detach().clone()))
    # the cut blocks add Z B, Z the kept block's 64 features: not a function of its 32-wide MLP output
    planted = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * 0.05
    blocks[kept + 1] = _PlantedBlock(lambda h: h + store["z"] @ planted)
    blocks[kept + 2] = _PlantedBlock(lambda h: h)
    drop = [kept + 1, kept + 2]
    reference = _output(model, family)
    linear = remove_blocks(model, drop, share_weights=True)
    repair_cut(model, linear, drop, _batches(family), method="linear", ridge=1e-9, progress=False)
    refit = remove_blocks(model, drop, share_weights=True)
    report = refit_model(
        model, refit, _batches(family), correspondence=cut_correspondence(6, drop), blocks=[kept], ridge=1e-12
    )
    assert report.blocks[0].target == kept + 2
    assert report.blocks[0].residual_after < 1e-8
    torch.testing.assert_close(_output(refit, family), reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_output(linear, family), reference, atol=1e-3)


def _stream_error(model, modified, family, k: int, target: int, norm_input: str = "") -> float:
    """||S_k - S*_target||^2 / ||S*||^2 by hooks on the calibration batches: S the block output (pre-norm),
    or with `norm_input` the input of that module of the block (e.g. the post-attention norm's: the
    stream after the attention residual)."""
    seen = {}

    def hook(name: str, block) -> Any:
        if norm_input:
            module = block.get_submodule(norm_input)
            return module.register_forward_pre_hook(
                lambda m, args: seen.__setitem__(name, args[0].detach().clone())
            )
        return block.register_forward_hook(
            lambda m, a, o: seen.__setitem__(name, o if isinstance(o, torch.Tensor) else o[0])
        )

    handles = [
        hook("o", get_anatomy(model).blocks(model)[target]),
        hook("m", get_anatomy(modified).blocks(modified)[k]),
    ]
    total, norm = 0.0, 0.0
    for batch in _batches(family):
        _output(model, family, batch["input_ids"])
        _output(modified, family, batch["input_ids"])
        total += float(((seen["m"] - seen["o"]) ** 2).sum())
        norm += float((seen["o"] ** 2).sum())
    for handle in handles:
        handle.remove()
    return total / norm


@pytest.mark.parametrize("ridge", [None, 1e-3, 1.0])
def test_refit_never_increases_the_calibration_error_it_minimises(ridge):
    family = "llama"
    model = build_tiny(family)
    drop = [2, 3]
    pruned = remove_blocks(model, drop, share_weights=True)
    repair_cut(model, pruned, drop, _batches(family), method="linear", progress=False)
    correspondence = cut_correspondence(6, drop)
    before = [_stream_error(model, pruned, family, k, correspondence[k]) for k in (1, 2, 3)]
    report = refit_model(model, pruned, _batches(family), correspondence=correspondence, ridge=ridge)
    assert [b.block for b in report.blocks] == [1, 2, 3]
    assert report.blocks[0].residual_before == pytest.approx(before[0], rel=1e-3)
    after = _stream_error(model, pruned, family, 1, correspondence[1])
    assert after <= before[0]
    assert report.blocks[0].residual_after == pytest.approx(after, rel=1e-3)
    for block in report.blocks:
        assert block.residual_after <= block.residual_before


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_refitted_model_reloads_with_stock_auto_class_and_generates_with_cache(family, tmp_path):
    model = build_tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drop = [2, 3]
    pruned = remove_blocks(model, drop, share_weights=True)
    repair_cut(model, pruned, drop, _batches(family, count=4), method="linear", progress=False)
    repaired = _output(pruned, family)
    report = refit_model(model, pruned, _batches(family, count=4), correspondence=cut_correspondence(6, drop))
    assert report.blocks and report.skipped is None
    refitted = _output(pruned, family)
    assert not torch.equal(refitted, repaired)
    for key, value in model.state_dict().items():  # the original (sharing its tensors) is untouched
        assert torch.equal(value, before[key]), key
    assert_reloads_stock(pruned, family, tmp_path, refitted, lambda m: _output(m, family))


def test_refit_skips_sandwich_blocks_and_checks_the_correspondence():
    model = build_tiny("gemma2")
    modified = copy.deepcopy(model)
    report = refit_model(model, modified, _batches("gemma2", count=2))
    assert report.skipped and "sandwich" in report.skipped and not report.blocks
    llama = build_tiny("llama")
    with pytest.raises(RepairError, match="correspondence"):
        refit_model(
            llama, copy.deepcopy(llama), _batches("llama", count=2), correspondence=[0, 2, 1, 3, 4, 5]
        )


def test_cut_correspondence():
    assert cut_correspondence(6, [2, 3]) == [0, 3, 4, 5]
    assert cut_correspondence(5, [0, 1]) == [2, 3, 4]
    assert cut_correspondence(4, []) == [0, 1, 2, 3]


def _final_error(model, modified, family) -> float:
    reference, output = _output(model, family), _output(modified, family)
    return float(((output - reference) ** 2).mean())


def test_squeeze_with_refit_tracks_the_dense_model_and_reloads(tmp_path):
    from prune.width import squeeze_model

    family = "llama"
    model = build_tiny(family)
    batches = _batches(family, count=8)
    plain = squeeze_model(model, batches, keep=0.5, progress=False, energy_levels=())
    refitted = squeeze_model(model, batches, keep=0.5, progress=False, energy_levels=(), refit=True)
    report = refitted.report.refit
    assert report is not None and [b["block"] for b in report["blocks"]] == list(range(6))
    assert all(b["features"] == 32 and b["residual_after"] <= b["residual_before"] for b in report["blocks"])
    assert _final_error(model, refitted.model, family) < _final_error(model, plain.model, family)
    refitted.model.save_pretrained(tmp_path)
    reloaded = auto_class(family).from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == 32
    torch.testing.assert_close(
        _output(reloaded, family), _output(refitted.model, family), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(RepairError, match="reference="):
        squeeze_model(copy.deepcopy(model), batches, keep=0.5, progress=False, inplace=True, refit=True)


def test_repair_cut_with_refit_reports_it_and_lowers_the_output_error():
    family = "llama"
    model = build_tiny(family)
    drop = [2, 3]
    batches = _batches(family, count=8)
    linear = remove_blocks(model, drop, share_weights=True)
    repair_cut(model, linear, drop, batches, method="linear", progress=False)
    refitted = remove_blocks(model, drop, share_weights=True)
    report = repair_cut(model, refitted, drop, batches, method="linear", progress=False, refit=True)
    assert [b["block"] for b in report.to_dict()["refit"]["blocks"]] == [1, 2, 3]
    assert _final_error(model, refitted, family) < _final_error(model, linear, family)
    none = remove_blocks(model, drop, share_weights=True)
    assert repair_cut(model, none, drop, batches, method="none", refit=True).refit is None  # the plain cut
    from prune.report import repair_lines

    text = "\n".join(repair_lines(report.to_dict()))
    assert "Refit (error-correcting" in text and "| 1 | 3 |" in text
