"""The squeeze's ridge chosen on held-back calibration batches: the split, the choice, the fold fitted on
everything afterwards, the report, and bad ridges."""

from __future__ import annotations

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.errors import PruneError, RepairError
from prune.report import squeeze_section
from prune.width import squeeze_model
from prune.width.compensate import block_problem, interpolation, output_errors, relative_output_error
from prune.width.ridge import RIDGE_GRID, choose_ridge, hold_back_split, split_token_budget
from prune.width.selection import SELECTORS, BlockProblem
from prune.width.stats import collect_ffn_stats
from tests.test_squeeze import _batches
from tests.tiny_models import build_tiny


def test_hold_back_split_interleaves_and_keeps_every_batch():
    fit, held = hold_back_split(list(range(12)))
    assert held == [4, 9]
    assert sorted(fit + held) == list(range(12))
    assert hold_back_split([7]) == ([7], [])
    assert hold_back_split([1, 2, 3]) == ([1, 2], [3])  # fewer than five: the last one


def _problem(acts: torch.Tensor, down: torch.Tensor) -> BlockProblem:
    acts = acts.double()
    return BlockProblem(acts.T @ acts / len(acts), acts.mean(0), down, (), False)


def test_choose_ridge_damps_a_fit_on_too_few_tokens():
    # 40 neurons, the last 10 noisy combinations of the first 30; 36 tokens to fit on is barely more than
    # the 30 regressors, so the plain least squares fits the noise and a larger ridge does better on new text
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(30, 10, generator=gen) / 30**0.5

    def acts(n: int) -> torch.Tensor:
        kept = torch.randn(n, 30, generator=gen)
        return torch.cat([kept, kept @ mix + 0.5 * torch.randn(n, 10, generator=gen)], dim=1)

    down = torch.randn(8, 40, generator=gen).double()
    fit, held = _problem(acts(36), down), _problem(acts(4000), down)
    choice = choose_ridge(fit, held, 30, SELECTORS["output"], "ls", selection_ridge=1e-3)
    assert set(choice.errors) == set(RIDGE_GRID)
    assert choice.ridge > RIDGE_GRID[0]
    assert choice.held_back_error == min(choice.errors.values())
    assert choice.held_back_error < 0.9 * choice.errors[RIDGE_GRID[0]]
    # the error it reports is the held-back error of that fold, recomputed independently
    kept = SELECTORS["output"](fit, 30, 1e-3)
    transform, offset = interpolation(fit, kept, "ls", choice.ridge)
    assert relative_output_error(held, kept, transform, offset) == pytest.approx(choice.held_back_error)


def test_auto_ridge_is_chosen_per_block_and_the_fold_uses_every_batch():
    model = build_tiny("llama")
    batches = _batches("llama", rows=20)  # five batches of 4 rows x 16 tokens: one held back
    report = squeeze_model(model, batches, keep=0.5, progress=False).report
    assert report.ridge == "auto"
    assert report.num_tokens == 20 * 16  # the final fold is fitted on all of them
    assert report.held_back_tokens == 4 * 16
    assert report.passes == 1  # holding back costs no extra pass over the data
    for block in report.blocks:
        assert block.ridge in RIDGE_GRID
        assert block.held_back_error is not None and block.held_back_error >= 0
    # the fold is the one fitted on all the batches with each block's chosen ridge (one statistics pass
    # on the dense model: the blocks are independent)
    anatomy = get_anatomy(model)
    stats = collect_ffn_stats(model, batches, anatomy, list(range(anatomy.num_blocks)), progress=False)
    for block in report.blocks:
        problem = block_problem(anatomy.mlp.parts(anatomy.blocks(model)[block.block]), stats[block.block])
        kept = SELECTORS["output"](problem, block.kept, 1e-3)
        transform, offset = interpolation(problem, kept, "ls", block.ridge)
        assert output_errors(problem, kept, transform, offset)[0] == pytest.approx(block.error, rel=1e-6)
    text = "\n".join(squeeze_section(report.to_dict()))
    assert "ridge chosen per block on 64 of those tokens" in text
    assert "error held back" in text


def test_auto_ridge_without_anything_to_hold_back_says_so():
    model = build_tiny("llama")
    report = squeeze_model(model, _batches("llama", rows=4), keep=0.5, progress=False).report
    assert {b.ridge for b in report.blocks} == {1e-3}
    assert all(b.held_back_error is None for b in report.blocks)
    assert "nothing to hold back" in report.ridge_note
    # methods without a least-squares fold have no ridge to choose
    report = squeeze_model(model, _batches("llama", rows=20), keep=0.5, method="wanda", progress=False).report
    assert report.held_back_tokens == 0 and report.ridge_note is None


@pytest.mark.parametrize("bad", [0, -1.0, "big", True])
def test_bad_ridge_is_refused(bad):
    with pytest.raises(RepairError, match="ridge must be 'auto' or a positive number"):
        squeeze_model(build_tiny("llama"), _batches("llama"), keep=0.5, ridge=bad, progress=False)


def test_ffn_ridge_flag():
    from prune.cli.flags import options_from_args
    from prune.cli.main import build_parser

    parser = build_parser(["squeeze"])

    def options(*extra: str):
        return options_from_args(parser.parse_args(["squeeze", "minilm-l6", "--ffn-keep", "0.5", *extra]))

    assert options().ffn_ridge == "auto"
    assert options("--ffn-ridge", "0.01").ffn_ridge == 0.01
    for bad in ("0", "-1", "lots"):
        with pytest.raises(PruneError, match="--ffn-ridge"):
            options("--ffn-ridge", bad)


def test_a_token_budget_is_shared_between_the_fit_and_the_held_back_batches():
    assert split_token_budget(1000) == (800, 200)
    assert split_token_budget(None) == (None, None)
    report = squeeze_model(
        build_tiny("llama"), _batches("llama", rows=20), keep=0.5, max_tokens=100, progress=False
    )
    assert report.report.num_tokens <= 100
    assert 0 < report.report.held_back_tokens <= 20


@pytest.mark.parametrize(("method", "ridge"), [("wanda", "auto"), ("flap", "auto"), ("squeeze", 1e-2)])
def test_held_back_statistics_that_choose_no_ridge_are_pooled(method, ridge):
    # a benchmark passes one (fit, held back) split to every method: where nothing is chosen on the
    # held-back part, the squeeze must equal the one on all the statistics together
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    fit_batches, held_batches = hold_back_split(_batches("llama", rows=20))
    every = list(range(anatomy.num_blocks))
    fit = collect_ffn_stats(model, fit_batches, anatomy, every, progress=False)
    held = collect_ffn_stats(model, held_batches, anatomy, every, progress=False)
    apart = squeeze_model(
        model, [], keep=0.5, method=method, ridge=ridge, stats=fit, held_back_stats=held, progress=False
    )
    pooled = squeeze_model(
        model, [], keep=0.5, method=method, ridge=ridge, stats={b: fit[b] + held[b] for b in every},
        progress=False,
    )  # fmt: skip
    assert apart.report.num_tokens == pooled.report.num_tokens == 20 * 16
    assert apart.report.held_back_tokens == 0 and apart.report.ridge_note is None
    assert [b.error for b in apart.report.blocks] == [b.error for b in pooled.report.blocks]
    for a, b in zip(apart.model.state_dict().values(), pooled.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
