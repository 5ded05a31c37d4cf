"""Targets, the score-based strategies and plans, on hand-built score tensors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from prune.errors import PruneError, TargetError
from prune.plan import STRATEGIES, Plan, PlanError, parse_target, plan_pruning, required_metrics

# Per-block "step sizes" of a toy residual stream: hidden state h_l sits at position sum(STEPS[:l]) on a
# line, so the angular distance between h_i and h_j is the length of the path between them.
STEPS = [0.5, 0.3, 0.02, 0.03, 0.01, 0.4, 0.005, 0.001]
L = len(STEPS)


def angular_from_steps(steps: list[float]) -> torch.Tensor:
    position = torch.tensor([0.0, *steps], dtype=torch.float64).cumsum(0)
    return (position[:, None] - position[None, :]).abs()


def toy_scores(num_blocks: int = L, seed: int = 0) -> dict[str, torch.Tensor]:
    """Consistent hand-made scores: bi, angular, cka and cka_io for a model with `num_blocks` blocks."""
    g = torch.Generator().manual_seed(seed)
    steps = (torch.rand(num_blocks, generator=g, dtype=torch.float64) * 0.5).tolist()
    angular = angular_from_steps(steps)
    cka = 1.0 - angular / angular.max()
    return {
        "bi": torch.tensor(steps, dtype=torch.float64) ** 2,
        "angular": angular,
        "cka": cka,
        "cka_io": torch.diagonal(cka, offset=1).clone(),
    }


# ---------------------------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("target", "num_blocks", "expected"),
    [
        ("8-layers", 12, 4),
        (" 8-Layers ", 12, 4),
        ("8-layer", 12, 4),
        ("1-layers", 12, 11),
        ("drop-4", 12, 4),
        ("DROP-1", 2, 1),
        ("drop-11", 12, 11),
        ("25%", 12, 3),
        ("25%", 30, 8),  # 7.5 rounds half up, not to even
        ("12.5%", 8, 1),
        ("0.5%", 30, 1),  # at least one block for any positive percentage
        ("50 %", 6, 3),
    ],
)
def test_parse_target_forms(target: str, num_blocks: int, expected: int) -> None:
    assert parse_target(target, num_blocks) == expected


@pytest.mark.parametrize(
    ("target", "num_blocks", "fix"),
    [
        ("8", 12, "8-layers"),  # a bare number is ambiguous
        ("12-layers", 12, "N-layers"),  # keeps everything
        ("13-layers", 12, "N-layers"),
        ("0-layers", 12, "N-layers"),
        ("drop-0", 12, "drop-N"),
        ("drop-12", 12, "drop-N"),
        ("drop-40", 12, "drop-N"),
        ("0%", 12, "P%"),
        ("100%", 12, "P%"),
        ("150%", 12, "P%"),
        ("-5%", 12, "P%"),
        ("95%", 6, "N-layers"),  # rounds to all 6 blocks
        ("half", 12, "N-layers"),
        ("", 12, "N-layers"),
        ("drop-", 12, "drop-N"),
        ("8 layers", 12, "N-layers"),
    ],
)
def test_parse_target_rejects_with_the_fix_and_the_block_count(
    target: str, num_blocks: int, fix: str
) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(target, num_blocks)
    message = str(info.value)
    assert fix in message and str(num_blocks) in message and "\n" not in message


def test_parse_target_rejects_non_text_and_single_block_models() -> None:
    with pytest.raises(TargetError, match="not text"):
        parse_target(8, 12)  # type: ignore[arg-type]
    with pytest.raises(TargetError, match="at least 2 blocks"):
        parse_target("drop-1", 1)


# ---------------------------------------------------------------------------------------------- span


def test_span_picks_the_argmin_start_and_keeps_the_last_block() -> None:
    scores = {"angular": angular_from_steps(STEPS)}
    plan = plan_pruning(scores, L, "drop-2", "span")
    # starts 0..5 (the span must end before block 7): 0.8, 0.32, 0.05, 0.04, 0.41, 0.405
    assert plan.drop == (3, 4)
    assert plan.details["span_start"] == 3 and len(plan.details["distance_by_start"]) == 6
    assert plan.details["distance"] == pytest.approx(0.04)
    assert "blocks 3-4" in plan.reason and "0.0400" in plan.reason


def test_span_allow_last_can_take_the_final_blocks() -> None:
    plan = plan_pruning({"angular": angular_from_steps(STEPS)}, L, "drop-2", "span", allow_last=True)
    assert plan.drop == (6, 7)
    assert len(plan.details["distance_by_start"]) == 7


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_drop", [1, 3, 7])
def test_span_matches_a_brute_force_argmin(seed: int, num_drop: int) -> None:
    g = torch.Generator().manual_seed(seed)
    matrix = torch.rand(L + 1, L + 1, generator=g, dtype=torch.float64)
    matrix = (matrix + matrix.T) / 2
    matrix.fill_diagonal_(0)
    plan = plan_pruning({"angular": matrix}, L, f"drop-{num_drop}", "span")
    starts = range(L - num_drop)  # l + n <= L - 1
    best = min(starts, key=lambda s: float(matrix[s, s + num_drop]))
    assert plan.drop == tuple(range(best, best + num_drop))
    assert L - 1 not in plan.drop


def test_span_by_cka_uses_one_minus_cka() -> None:
    angular = angular_from_steps(STEPS)
    plan = plan_pruning({"cka": 1.0 - angular}, L, "drop-2", "span", metric="cka")
    assert plan.drop == (3, 4) and plan.metric == "cka"


# ---------------------------------------------------------------------------------------------- topk / cka


def test_topk_drops_the_lowest_bi_but_not_the_last_block() -> None:
    bi = torch.tensor([0.9, 0.2, 0.05, 0.4, 0.1, 0.3, 0.6, 0.01], dtype=torch.float64)
    plan = plan_pruning({"bi": bi}, L, "drop-3", "topk")
    assert plan.drop == (1, 2, 4) and plan.metric == "bi"
    assert plan.details["ranking"][:3] == [2, 4, 1] and 7 not in plan.details["ranking"]
    assert plan_pruning({"bi": bi}, L, "drop-3", "topk", allow_last=True).drop == (2, 4, 7)


def test_topk_by_angular_uses_the_block_diagonal() -> None:
    plan = plan_pruning({"angular": angular_from_steps(STEPS)}, L, "drop-3", "topk", metric="angular")
    assert plan.drop == (2, 4, 6)  # steps 0.01, 0.005 and 0.02; block 7 (0.001) is the last


def test_cka_drops_the_highest_cka_io() -> None:
    cka_io = torch.tensor([0.2, 0.95, 0.5, 0.99, 0.7, 0.97, 0.3, 0.999], dtype=torch.float64)
    plan = plan_pruning({"cka_io": cka_io}, L, "drop-3", "cka")
    assert plan.drop == (1, 3, 5) and plan.metric == "cka"
    assert "highest CKA" in plan.reason and "0.9900" in plan.reason
    # topk ranked by cka (1 - cka_io) is the same choice; cka_io is accepted as the metric's name
    assert plan_pruning({"cka_io": cka_io}, L, "drop-3", "topk", metric="cka_io").drop == (1, 3, 5)
    assert plan_pruning({"cka_io": cka_io}, L, "drop-1", "cka", allow_last=True).drop == (7,)


def test_cka_reads_the_full_matrix_when_cka_io_is_missing() -> None:
    scores = toy_scores()
    from_matrix = plan_pruning({"cka": scores["cka"]}, L, "drop-3", "cka")
    assert from_matrix.drop == plan_pruning({"cka_io": scores["cka_io"]}, L, "drop-3", "cka").drop


# ---------------------------------------------------------------------------------------------- baselines


def test_last_drops_the_blocks_before_the_final_one() -> None:
    assert plan_pruning({}, 6, "drop-2", "last").drop == (3, 4)
    assert plan_pruning({}, 6, "drop-2", "last", allow_last=True).drop == (4, 5)
    assert plan_pruning({}, 6, "1-layers", "last").drop == (0, 1, 2, 3, 4)


def test_random_is_seeded_and_avoids_the_last_block() -> None:
    first = plan_pruning({}, 30, "drop-4", "random", seed=0)
    assert first.drop == plan_pruning({}, 30, "drop-4", "random", seed=0).drop
    assert first.drop != plan_pruning({}, 30, "drop-4", "random", seed=1).drop
    assert first.drop == tuple(sorted(random.Random(0).sample(range(29), 4)))
    draws = [plan_pruning({}, 6, "drop-3", "random", seed=s).drop for s in range(50)]
    assert all(5 not in d for d in draws) and len(set(draws)) > 5
    assert any(5 in plan_pruning({}, 6, "drop-3", "random", seed=s, allow_last=True).drop for s in range(50))


# ---------------------------------------------------------------------------------------------- plans


@pytest.mark.parametrize(
    "strategy", [name for name in STRATEGIES.names() if not STRATEGIES.get(name).needs_search]
)
@pytest.mark.parametrize("target", ["drop-1", "4-layers", "50%"])
def test_every_strategy_gives_a_valid_json_able_plan(strategy: str, target: str) -> None:
    plan = plan_pruning(toy_scores(), L, target, strategy, seed=3)
    assert len(plan.drop) == parse_target(target, L) and plan.drop == tuple(sorted(set(plan.drop)))
    assert set(plan.drop) | set(plan.keep) == set(range(L)) and not set(plan.drop) & set(plan.keep)
    assert L - 1 in plan.keep
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["drop"] == list(plan.drop) and data["keep"] == list(plan.keep) and data["target"] == target
    assert Plan.from_dict(data) == plan
    assert plan.reason.endswith(".") and "\n" not in plan.reason
    assert str(plan.drop[0]) in plan.reason


def test_plan_keep_and_validation() -> None:
    plan = Plan(5, (3, 1), "topk", "bi", "drop-2", "because", {})
    assert plan.drop == (1, 3) and plan.keep == (0, 2, 4)
    with pytest.raises(PlanError):
        Plan(5, (1, 1), "topk", "bi", "drop-2", "dup", {})
    with pytest.raises(PlanError):
        Plan(5, (5,), "topk", "bi", "drop-1", "out of range", {})


@pytest.mark.parametrize(
    ("strategy", "metric", "expected"),
    [
        ("span", None, ("angular",)),
        ("span", "cka", ("cka",)),
        ("topk", None, ("bi",)),
        ("topk", "angular", ("angular",)),
        ("topk", "cka", ("cka_io",)),
        ("cka", None, ("cka_io",)),
        ("iterative", None, ("bi",)),
        ("iterative", "angular", ("angular",)),
        ("last", None, ()),
        ("random", None, ()),
    ],
)
def test_required_metrics(strategy: str, metric: str | None, expected: tuple[str, ...]) -> None:
    assert required_metrics(strategy, metric) == expected


def test_required_metrics_cover_what_each_strategy_reads() -> None:
    full = toy_scores()
    for strategy in STRATEGIES.names():
        if STRATEGIES.get(strategy).needs_search:  # covered where a SearchContext is built
            continue
        only = {name: full[name] for name in required_metrics(strategy)}
        assert (
            plan_pruning(only, L, "drop-2", strategy).drop == plan_pruning(full, L, "drop-2", strategy).drop
        )


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: plan_pruning(toy_scores(), L, "drop-1", "greedy"), ["span", "topk", "iterative"]),
        (lambda: plan_pruning(toy_scores(), L, "drop-1", "topk", metric="mse"), ["bi", "angular", "cka"]),
        (lambda: plan_pruning(toy_scores(), L, "drop-1", "span", metric="bi"), ["angular", "cka"]),
        (lambda: plan_pruning(toy_scores(), L, "drop-1", "random", metric="bi"), ["uses no metric"]),
        (
            lambda: plan_pruning({"angular": toy_scores()["angular"]}, L, "drop-1", "topk"),
            ["'bi'", "required_metrics"],
        ),
        (lambda: plan_pruning({"bi": torch.zeros(3)}, L, "drop-1", "topk"), ["[3]", f"{L} blocks"]),
        (lambda: plan_pruning({"bi": torch.full((L,), float("nan"))}, L, "drop-1", "topk"), ["NaN"]),
        (lambda: plan_pruning(toy_scores(), L, "drop-1", "iterative"), ["SearchContext"]),
        (lambda: plan_pruning([1, 2], L, "drop-1", "topk"), ["dict"]),  # type: ignore[arg-type]
        (lambda: required_metrics("nope"), ["span"]),
    ],
)
def test_bad_input_raises_a_one_line_prune_error(call, words: list[str]) -> None:
    with pytest.raises(PruneError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_targets_are_checked_before_scores() -> None:
    with pytest.raises(TargetError):
        plan_pruning({}, L, "8", "topk")
