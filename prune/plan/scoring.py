"""Scores as the strategies read them: one convention, lower = more removable.

What each raw score is (shape, direction, spans) is `prune.scores`; this module turns it into the
planner's one convention. The collector's metrics come in different directions (BI and angular distance are low for redundant
blocks, CKA is high), so each metric a strategy can rank by is a `Ranking` that turns the collector's
scores into a per-block vector and, where the metric is pairwise, a per-span matrix, both with lower
meaning "safer to remove". ``cka`` is therefore ``1 - CKA``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from prune.errors import PlanError
from prune.registry import Registry
from prune.scores import expected_shape, off_diagonal


def _need(scores: Mapping[str, Tensor], key: str, num_blocks: int, *, pairwise: bool, why: str) -> Tensor:
    """`scores[key]` as float64 on CPU, checked for presence, shape and NaN."""
    if key not in scores:
        have = ", ".join(sorted(scores)) or "none"
        raise PlanError(
            f"{why} needs the {key!r} scores, which were not collected (have: {have}); "
            "collect with metrics=prune.plan.required_metrics(strategy, metric)"
        )
    value = torch.as_tensor(scores[key]).detach().to("cpu", torch.float64)
    shape = expected_shape("cka" if pairwise else "bi", num_blocks)
    if tuple(value.shape) != shape:
        raise PlanError(
            f"the {key!r} scores have shape {list(value.shape)} but a model with {num_blocks} blocks needs "
            f"{list(shape)}; collect the statistics on the model you prune"
        )
    if torch.isnan(value).any():
        bad = sorted({int(i) for i in torch.nonzero(torch.isnan(value))[:, 0].tolist()})
        raise PlanError(
            f"the {key!r} scores are NaN at rows {bad} (too few calibration tokens?); collect more data"
        )
    return value


@dataclass(frozen=True)
class Ranking:
    """How one metric ranks blocks (and, if pairwise, spans), lower = more removable.

    Attributes:
        name: the metric name users pass (``--metric``).
        label: how the reason sentence names the most removable end of the scale ("lowest BI").
        needs: the metrics `collect_stats` must gather for the per-block vector.
        span_needs: the metrics it must gather for the span matrix.
        vector: scores, num_blocks -> per-block values [L].
        matrix: scores, num_blocks -> [L+1, L+1] values where [i, j] scores cutting blocks i..j-1, or
            None when the metric is only per block.
    """

    name: str
    label: str
    needs: tuple[str, ...]
    span_needs: tuple[str, ...]
    vector: Callable[[Mapping[str, Tensor], int], Tensor]
    matrix: Callable[[Mapping[str, Tensor], int], Tensor] | None = None

    def raw(self, value: float) -> float:
        """The metric as the collector reports it, for reason sentences (undoes ``1 - CKA``)."""
        return 1.0 - value if self.name == "cka" else value


RANKINGS: Registry[Ranking] = Registry("metric")


def _bi(scores: Mapping[str, Tensor], num_blocks: int) -> Tensor:
    return _need(scores, "bi", num_blocks, pairwise=False, why="ranking by block influence")


def _angular_matrix(scores: Mapping[str, Tensor], num_blocks: int) -> Tensor:
    return _need(scores, "angular", num_blocks, pairwise=True, why="ranking by angular distance")


def _angular_vector(scores: Mapping[str, Tensor], num_blocks: int) -> Tensor:
    return off_diagonal(_angular_matrix(scores, num_blocks))


def _cka_matrix(scores: Mapping[str, Tensor], num_blocks: int) -> Tensor:
    return 1.0 - _need(scores, "cka", num_blocks, pairwise=True, why="ranking spans by CKA")


def _cka_vector(scores: Mapping[str, Tensor], num_blocks: int) -> Tensor:
    # cka_io is the cheap per-block form; the full matrix holds the same numbers on its first off-diagonal.
    if "cka_io" not in scores and "cka" in scores:
        return off_diagonal(_cka_matrix(scores, num_blocks))
    return 1.0 - _need(scores, "cka_io", num_blocks, pairwise=False, why="ranking by CKA(input, output)")


RANKINGS.register("bi", Ranking("bi", "lowest block influence BI", ("bi",), (), _bi))
RANKINGS.register(
    "angular",
    Ranking(
        "angular",
        "smallest angular distance between input and output",
        ("angular",),
        ("angular",),
        _angular_vector,
        _angular_matrix,
    ),
)
RANKINGS.register(
    "cka",
    Ranking("cka", "highest CKA(input, output)", ("cka_io",), ("cka",), _cka_vector, _cka_matrix),
)


def get_ranking(name: str) -> Ranking:
    """The `Ranking` called `name`, or a PlanError listing the valid names."""
    try:
        return RANKINGS.get(name)
    except KeyError as err:
        raise PlanError(f"{err.args[0]} (--metric)") from None


def rounded(value: float, digits: int = 4) -> float:
    """`value` rounded for JSON details and reason sentences (inf/nan kept as they are)."""
    return value if not math.isfinite(value) else round(float(value), digits)
