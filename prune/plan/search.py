"""Redundancy-aware iterative search: remove one block at a time, scored on calibration data.

One-shot scores (BI, angular distance) rank blocks by how little each changes its input in the full
model, but removing one block changes what the others see (SLEB, BlockPruner: iterative removal beats
one-shot scores). The ``iterative`` strategy therefore removes blocks greedily: at each step it takes
the `candidates_per_step` most redundant remaining blocks by the similarity ranking, evaluates the model
without each of them (plus the blocks already removed) on a few calibration batches, and removes the one
that hurts the objective least. That costs about ``n * m`` forward passes instead of ``L^2``.

The candidates are scored through a `prune.plan.search_context.SearchContext` (objectives ``loss``,
``kl``, ``cosine``), which the request carries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from prune.errors import PlanError
from prune.plan.base import (
    Selection,
    SelectRequest,
    Strategy,
    candidate_blocks,
    describe_blocks,
    last_note,
    register,
)
from prune.plan.scoring import get_ranking, rounded
from prune.plan.search_context import OBJECTIVES, SearchContext, _bucket_kl
from prune.plan.strategies import SPAN, TOPK

__all__ = ["ITERATIVE", "OBJECTIVES", "IterativeStrategy", "SearchContext", "_bucket_kl"]


@dataclass(frozen=True)
class IterativeStrategy(Strategy):
    """Greedy removal scored on calibration data, candidates ordered by the similarity ranking.

    At each of the n steps the remaining candidates are ordered by the ranking metric (lower = more
    redundant; for pairwise metrics, ``angular`` and ``cka`` with the full matrix, a candidate is scored
    as the span it would form with the adjacent blocks already removed), the first
    `SearchContext.candidates_per_step` are evaluated with the blocks already chosen, and the best one
    is removed.

    Never worse than ``topk`` by construction: after the greedy pass, the set that ``topk`` picks with
    the same metric (and, when the angular scores are there, the set ``span`` picks) is evaluated on
    the same batches with the same objective, and the best of these sets wins (ties go to the greedy
    set). So the plan's objective is <= topk's at the same target, whatever the greedy path did.
    """

    needs_search: ClassVar[bool] = True

    def select(self, request: SelectRequest) -> Selection:
        scores, num_blocks, num_drop = request.scores, request.num_blocks, request.num_drop
        metric, allow_last, search = request.metric, request.allow_last, request.search
        if search is None:
            raise PlanError(
                "strategy 'iterative' evaluates the model on calibration data; pass "
                "search=prune.plan.SearchContext(model, batches, kind=...), or pick a score-based strategy"
            )
        from tqdm.auto import tqdm

        start_time = time.perf_counter()
        ranking = get_ranking(metric or "bi")
        vector = ranking.vector(scores, num_blocks).tolist()
        matrix = None
        if ranking.matrix is not None and all(key in scores for key in ranking.span_needs):
            matrix = ranking.matrix(scores, num_blocks)
        evaluated: dict[tuple[int, ...], float] = {}
        total = num_drop * search.candidates_per_step + 3
        bar = tqdm(total=total, desc="iterative search", unit="eval", disable=not search.progress)

        def objective(drop: Iterable[int]) -> float:
            key = tuple(sorted(drop))
            if key not in evaluated:
                value = search.evaluate(key)
                evaluated[key] = value if math.isfinite(value) else math.inf
                bar.update(1)
            return evaluated[key]

        def priority(block: int, dropped: list[int]) -> float:
            if matrix is None:
                return vector[block]
            lo, hi = block, block
            while lo - 1 in dropped:
                lo -= 1
            while hi + 1 in dropped:
                hi += 1
            return float(matrix[lo, hi + 1])

        unpruned = objective(())
        dropped: list[int] = []
        steps = []
        for step in range(num_drop):
            remaining = [b for b in candidate_blocks(num_blocks, allow_last) if b not in dropped]
            order = sorted(remaining, key=lambda b: (priority(b, dropped), b))
            tried = [
                (objective([*dropped, b]), rank, b)
                for rank, b in enumerate(order[: search.candidates_per_step])
            ]
            best_value, _, best = min(tried)
            steps.append(
                {
                    "step": step + 1,
                    "dropped_before": sorted(dropped),
                    "candidates": [
                        {"block": b, "priority": rounded(priority(b, dropped), 6), "objective": rounded(v, 6)}
                        for v, _, b in tried
                    ],
                    "chosen": best,
                    "objective": rounded(best_value, 6),
                }
            )
            dropped.append(best)

        # The guarantee: the one-shot sets are evaluated the same way, and the best set wins.
        sets = {"greedy": tuple(sorted(dropped))}
        one_shot = replace(request, search=None)
        sets["topk"] = TOPK.select(replace(one_shot, metric=ranking.name)).drop
        if "angular" in scores:
            sets["span"] = SPAN.select(replace(one_shot, metric="angular")).drop
        values = {name: objective(drop) for name, drop in sets.items()}
        bar.close()
        winner = min(sets, key=lambda name: (values[name], list(sets).index(name)))
        drop = sets[winner]

        what = OBJECTIVES[search.objective]
        reason = (
            f"greedy removal scored on {what} ({search.candidates_per_step} candidates per step by {ranking.label}, "
            f"{len(evaluated)} evaluations) "
        )
        if winner == "greedy":
            reason += f"chose {describe_blocks(drop)}: {values['greedy']:.4f}"
        else:
            reason += (
                f"found {describe_blocks(sets['greedy'])} ({values['greedy']:.4f}), but the {winner} set "
                f"{describe_blocks(drop)} scored better and was kept: {values[winner]:.4f}"
            )
        reason += (
            f" (unpruned {unpruned:.4f}; topk set {values['topk']:.4f}){last_note(allow_last, num_blocks)}."
        )
        details: dict[str, Any] = {
            "objective": search.objective,
            "objective_unpruned": rounded(unpruned, 6),
            "objective_final": rounded(values[winner], 6),
            "chosen_from": winner,
            "sets": {
                name: {"drop": list(d), "objective": rounded(values[name], 6)} for name, d in sets.items()
            },
            "steps": steps,
            "candidates_per_step": search.candidates_per_step,
            "ranking_metric": ranking.name,
            "evaluations": len(evaluated),
            "batches": len(search.used_batches),
            "seconds": round(time.perf_counter() - start_time, 2),
        }
        return Selection(drop, reason, details)


ITERATIVE = register(
    IterativeStrategy(
        "iterative",
        "greedy removal scored on calibration loss, candidates ordered by the similarity ranking",
        metrics=("bi", "angular", "cka"),
        default_metric="bi",
    )
)
