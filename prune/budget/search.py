"""Search blocks cut x FFN width under a budget: cheap statistics first, exact held-back loss last.

The search space is every depth n (the blocks the depth strategy cuts for n, repaired as the run
repairs) crossed with every FFN width k (neurons kept per block, a multiple of `multiple`). For a
parameter or size budget the best model of each depth is the widest that fits, so the candidates are
one point per depth: the *budget frontier*, from width only (n = 0) to depth only (the fewest blocks cut
at full width). Both ends are always evaluated, so the choice is never worse on the held-back loss than
either axis alone.

Cheap first: every interior point gets a predicted loss increase ``a * depth_cost(n) + b * width_cost(k)``
from the statistics (e.g. the distance of the cut span, the share of activation energy the kept neurons
lose), with ``a`` and ``b`` calibrated on the two exactly evaluated ends; the `exact_candidates` most
promising interior points are then built and scored, then their untried neighbours while they improve.
Exact last: the winner is the lowest held-back calibration loss among the evaluated points.

A loss budget asks for the smallest model whose held-back perplexity is within F x the original's: a
bisection on the parameter budget, each step a frontier search as above. A latency budget turns into a
parameter budget through a latency model fitted on measured points and is checked by measuring the
chosen model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prune.budget.cost import ModelCosts
from prune.budget.spec import Budget
from prune.errors import BudgetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One configuration: the blocks cut and the FFN neurons every kept block keeps."""

    drop: tuple[int, ...]
    keep: int
    params: int
    size_bytes: float

    @property
    def depth(self) -> int:
        return len(self.drop)

    def label(self, d_ff: int) -> str:
        width = "full width" if self.keep >= d_ff else f"FFN {self.keep}/{d_ff}"
        return f"cut {self.depth} block(s), {width}"


@dataclass
class Evaluated:
    """A candidate with its measured held-back loss (and latency when measured)."""

    candidate: Candidate
    loss: float
    predicted: float | None = None
    latency_s: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf


@dataclass
class SearchResult:
    """What the search chose and what it saw on the way.

    Attributes:
        chosen: The winning evaluated candidate.
        explored: Every evaluated candidate, in evaluation order.
        frontier: Every candidate considered (evaluated or not), with its predicted loss increase.
        reference_loss: Held-back loss of the original model.
        reason: Why the winner won, in words.
    """

    chosen: Evaluated
    explored: list[Evaluated]
    frontier: list[tuple[Candidate, float | None]]
    reference_loss: float
    reason: str
    budget: Budget | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, d_ff: int) -> dict[str, Any]:
        """JSON-able summary for the report."""

        def row(item: Evaluated) -> dict[str, Any]:
            c = item.candidate
            return {
                "drop": list(c.drop),
                "ffn_keep": c.keep,
                "params": c.params,
                "size_bytes": c.size_bytes,
                "loss": item.loss,
                "perplexity": item.perplexity,
                "latency_s": item.latency_s,
                "label": c.label(d_ff),
            }

        return {
            "budget": self.budget.text if self.budget else None,
            "chosen": row(self.chosen),
            "reference_loss": self.reference_loss,
            "reference_perplexity": math.exp(self.reference_loss),
            "explored": [row(e) for e in self.explored],
            "reason": self.reason,
            **self.info,
        }


def budget_frontier(
    costs: ModelCosts,
    plans: Sequence[tuple[int, ...]],
    max_params: float,
    *,
    multiple: int = 8,
    min_keep_fraction: float = 0.25,
) -> list[Candidate]:
    """The widest configuration within `max_params` for each depth.

    Args:
        costs: The model's costs.
        plans: ``plans[n]`` = the blocks the depth strategy cuts for n blocks (``plans[0] == ()``).
        max_params: The parameter limit.
        multiple: Widths are multiples of this (hardware-friendly sizes).
        min_keep_fraction: Widths below this fraction of d_ff are not considered.

    Returns:
        Candidates in order of increasing depth, stopping at the first depth that fits at full width
        (deeper cuts at full width are strictly smaller and no better).
    """
    d_ff = costs.intermediate_size
    frontier = []
    for drop in plans:
        keep = costs.max_keep_within(drop, max_params, multiple=multiple)
        if keep is None or (d_ff and keep < min_keep_fraction * d_ff):
            continue
        frontier.append(Candidate(drop, keep, costs.params_after(drop, keep), costs.bytes_after(drop, keep)))
        if keep >= d_ff:
            break
    return frontier


def search_frontier(
    frontier: Sequence[Candidate],
    evaluate: Callable[[Candidate], float],
    *,
    reference_loss: float,
    depth_cost: Callable[[Candidate], float] | None = None,
    width_cost: Callable[[Candidate], float] | None = None,
    exact_candidates: int = 2,
    d_ff: int,
) -> tuple[Evaluated, list[Evaluated], list[tuple[Candidate, float | None]]]:
    """Evaluate the frontier's ends exactly, predict the rest, evaluate the most promising.

    Args:
        frontier: Candidates ordered by depth (`budget_frontier`).
        evaluate: Builds a candidate and returns its held-back loss.
        reference_loss: The original model's held-back loss.
        depth_cost, width_cost: Cheap costs from the statistics (0 for no cut / full width).
        exact_candidates: Interior candidates evaluated from the predictions (plus improving neighbours).
        d_ff: The model's FFN width (for labels).

    Returns:
        (best, evaluated in order, every candidate with its predicted loss increase).
    """
    if not frontier:
        raise BudgetError("no configuration to search")
    done: dict[int, Evaluated] = {}

    def run(index: int, predicted: float | None = None) -> Evaluated:
        if index not in done:
            candidate = frontier[index]
            logger.info("budget search: evaluating %s", candidate.label(d_ff))
            done[index] = Evaluated(candidate, float(evaluate(candidate)), predicted)
        return done[index]

    ends = sorted({0, len(frontier) - 1})
    for index in ends:
        run(index)
    predictions: list[float | None] = [None] * len(frontier)
    if len(frontier) > 2 and depth_cost is not None and width_cost is not None:
        predictions = _predict(frontier, done, reference_loss, depth_cost, width_cost)
        order = sorted(
            (i for i in range(1, len(frontier) - 1)),
            key=lambda i: (predictions[i] if predictions[i] is not None else math.inf, i),
        )
        for index in order[:exact_candidates]:
            run(index, predictions[index])
        # local refinement: walk to an unevaluated neighbour of the best while it improves
        while True:
            best = min(done, key=lambda i: done[i].loss)
            untried = [i for i in (best - 1, best + 1) if 0 <= i < len(frontier) and i not in done]
            if not untried:
                break
            before = done[best].loss
            for index in untried:
                run(index, predictions[index])
            if min(done[i].loss for i in untried) >= before:
                break
    elif len(frontier) > 2:
        middle = len(frontier) // 2
        run(middle)
    best = min(done.values(), key=lambda e: (e.loss, -e.candidate.params))
    table = [(candidate, predictions[i]) for i, candidate in enumerate(frontier)]
    return best, list(done.values()), table


def _predict(frontier, done, reference_loss, depth_cost, width_cost) -> list[float | None]:
    """Loss increase ~ a * depth_cost + b * width_cost, a and b fitted on the evaluated ends."""
    first, last = frontier[0], frontier[-1]
    a = b = None
    # width-only end (no cut): its increase is all width; depth-only end (full width): all depth.
    width_end = done.get(0)
    depth_end = done.get(len(frontier) - 1)
    if width_end is not None and width_cost(first) > 0:
        b = max(width_end.loss - reference_loss, 0.0) / width_cost(first)
    if depth_end is not None and depth_cost(last) > 0:
        a = max(depth_end.loss - reference_loss, 0.0) / depth_cost(last)
    if a is None or b is None:
        return [None] * len(frontier)
    return [a * depth_cost(c) + b * width_cost(c) for c in frontier]


__all__ = ["Candidate", "Evaluated", "SearchResult", "budget_frontier", "search_frontier"]
