"""Budgets: the grammar, and the cost model against real cut-and-sliced models of every family."""

from __future__ import annotations

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.budget import ModelCosts, parse_budget
from prune.errors import BudgetError
from prune.fold import select_inputs, select_outputs
from prune.report import parameter_count
from prune.surgery import remove_blocks
from tests.tiny_models import TINY_FAMILIES, build_tiny


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("params:100M", "params", 1e8),
        ("params: 1.5b", "params", 1.5e9),
        ("params:800000", "params", 8e5),
        ("size:350MB", "size", 3.5e8),
        ("size:512MiB", "size", 512 * 2**20),
        ("latency:0.7x", "latency", 0.7),
        ("loss:1.10x", "loss", 1.1),
        ("LOSS:1.25", "loss", 1.25),
    ],
)
def test_budget_grammar(text, kind, value):
    budget = parse_budget(text)
    assert (budget.kind, budget.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100M", "write it as"),
        ("flops:1G", "unknown budget kind 'flops'"),
        ("params:lots", "params:100M"),
        ("size:350", "size:350MB"),
        ("latency:1.2x", "0 < F < 1"),
        ("loss:0.9x", "F > 1"),
        ("params:0", "must be positive"),
    ],
)
def test_bad_budgets_name_the_fix(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(text)


def _squeeze_by_hand(model, keep: int) -> None:
    anatomy = get_anatomy(model)
    index = torch.arange(keep)
    for block in anatomy.blocks(model):
        parts = anatomy.mlp.parts(block)
        for projection in parts.inputs:
            select_outputs(projection, index, fused_halves=2 if projection is parts.gate_up else 1)
        select_inputs(parts.down, index)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cost_model_counts_exactly_what_surgery_leaves(family):
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    costs = ModelCosts.from_model(model, anatomy)
    assert costs.params_after(()) == parameter_count(model)
    drop = (1, 3)
    keep = costs.intermediate_size // 2
    cut = remove_blocks(model, drop, anatomy=anatomy)
    assert costs.params_after(drop) == parameter_count(cut)
    _squeeze_by_hand(cut, keep)
    assert costs.params_after(drop, keep) == parameter_count(cut)


def test_max_keep_within_a_parameter_budget():
    model = build_tiny("llama")
    costs = ModelCosts.from_model(model, get_anatomy(model))
    budget = costs.params_after((2,), 40) + 5
    keep = costs.max_keep_within((2,), budget)
    assert keep == 40
    assert costs.params_after((2,), keep) <= budget < costs.params_after((2,), keep + 1)
    assert costs.max_keep_within((2,), budget, multiple=16) == 32
    assert costs.max_keep_within((), 10) is None
    assert costs.max_keep_within((2,), costs.total_params) == costs.intermediate_size


def _frontier_of_tiny():
    from prune.budget.search import budget_frontier

    model = build_tiny("llama")
    costs = ModelCosts.from_model(model, get_anatomy(model))
    plans = [tuple(range(1, 1 + n)) for n in range(0, 5)]
    limit = costs.params_after((1, 2), costs.intermediate_size)
    return costs, budget_frontier(costs, plans, limit, multiple=4, min_keep_fraction=0.1)


def test_frontier_runs_from_width_only_to_depth_only_within_the_budget():
    costs, frontier = _frontier_of_tiny()
    limit = costs.params_after((1, 2), costs.intermediate_size)
    assert frontier[0].depth == 0 and frontier[0].keep < costs.intermediate_size
    assert frontier[-1].drop == (1, 2) and frontier[-1].keep == costs.intermediate_size
    assert all(c.params <= limit for c in frontier)
    assert [c.depth for c in frontier] == sorted(c.depth for c in frontier)


@pytest.mark.parametrize("best_depth", [0, 1, 2])
def test_search_finds_the_best_point_and_never_loses_to_either_axis(best_depth):
    from prune.budget.search import search_frontier

    costs, frontier = _frontier_of_tiny()
    losses = {c.depth: 3.0 + abs(c.depth - best_depth) * 0.5 for c in frontier}
    calls = []

    def evaluate(candidate):
        calls.append(candidate.depth)
        return losses[candidate.depth]

    best, explored, table = search_frontier(
        frontier,
        evaluate,
        reference_loss=2.9,
        depth_cost=lambda c: c.depth,
        width_cost=lambda c: 1 - c.keep / costs.intermediate_size,
        exact_candidates=1,
        d_ff=costs.intermediate_size,
    )
    assert best.candidate.depth == best_depth
    assert best.loss <= min(losses[frontier[0].depth], losses[frontier[-1].depth])
    assert {frontier[0].depth, frontier[-1].depth} <= set(calls)
    assert len(calls) == len(set(calls))  # each candidate built once
    assert len(table) == len(frontier)
