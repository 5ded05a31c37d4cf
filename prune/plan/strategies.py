"""The score-based strategies and the baselines: span, topk, cka, last, random.

Each reads the collector's scores through a `prune.plan.scoring.Ranking` (lower = more removable), never
drops the last block unless `allow_last` (it is usually the most important: it maps onto the output
head), breaks ties towards the lower block index, and explains its choice with the numbers.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from prune.scores import span_distances

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class SpanStrategy(Strategy):
    """Cut the contiguous span of n blocks whose input and output are most alike (Gromov et al. 2024).

    With ``d(l, n) = angular[l, l + n]`` (the mean angular distance between the input of block l and the
    output of block l+n-1), the span starting at ``argmin_l d(l, n)`` is removed. Without `allow_last`
    the span must end before the last block (``l + n <= L - 1``). With metric ``cka`` the distance is
    ``1 - CKA`` of the same two hidden states.
    """

    def required_metrics(self, metric: str | None) -> tuple[str, ...]:
        return get_ranking(self.resolve_metric(metric) or "angular").span_needs

    def select(self, request: SelectRequest) -> Selection:
        scores, num_blocks, num_drop = request.scores, request.num_blocks, request.num_drop
        metric, allow_last = request.metric, request.allow_last
        ranking = get_ranking(metric or "angular")
        assert ranking.matrix is not None  # every metric span accepts is pairwise
        matrix = ranking.matrix(scores, num_blocks)
        distances = span_distances(matrix, num_blocks, num_drop, allow_last)
        best = min(distances, key=lambda start: (distances[start], start))
        drop = tuple(range(best, best + num_drop))
        others = sorted((d, s) for s, d in distances.items() if s != best)

        name = "angular distance" if ranking.name == "angular" else "1 - CKA"
        reason = (
            f"{describe_blocks(drop)} are the contiguous span of {num_drop} whose input and output are closest: "
            f"{name} d({best}, {num_drop}) = {distances[best]:.4f}"
        )
        if others:
            reason += (
                f" (next best start {others[0][1]}: {others[0][0]:.4f}; median of "
                f"{len(distances)} starts {statistics.median(distances.values()):.4f})"
            )
        reason += last_note(allow_last, num_blocks) + "."
        details: dict[str, Any] = {
            "span_start": best,
            "span_length": num_drop,
            "distance": rounded(distances[best], 6),
            "distance_by_start": [rounded(d, 6) for d in distances.values()],
            "distance_definition": f"{name} between h[l] and h[l+{num_drop}] (lower = more removable)",
        }
        return Selection(drop, reason, details)


@dataclass(frozen=True)
class RankStrategy(Strategy):
    """Drop the n independent blocks with the most removable per-block score.

    ``topk`` ranks by block influence by default (ShortGPT: drop the lowest BI); ``cka`` is the same
    ranking by CKA(input, output) (RedTest: drop the blocks whose output is most similar to their
    input, keep the least similar ones).
    """

    def select(self, request: SelectRequest) -> Selection:
        scores, num_blocks, num_drop = request.scores, request.num_blocks, request.num_drop
        metric, allow_last = request.metric, request.allow_last
        ranking = get_ranking(metric or "bi")
        values = ranking.vector(scores, num_blocks).tolist()
        order = sorted(candidate_blocks(num_blocks, allow_last), key=lambda b: (values[b], b))
        drop = tuple(sorted(order[:num_drop]))
        shown = ", ".join(f"{ranking.raw(values[b]):.4f}" for b in order[:num_drop])
        reason = f"{describe_blocks(drop)} have the {ranking.label} ({shown}"
        if len(order) > num_drop:
            runner_up = order[num_drop]
            reason += f"; the next candidate, block {runner_up}, has {ranking.raw(values[runner_up]):.4f}"
        reason += ")" + last_note(allow_last, num_blocks) + "."
        details: dict[str, Any] = {
            "scores": [rounded(ranking.raw(v), 6) for v in values],
            "score_definition": f"{ranking.name} per block; removed first: {ranking.label}",
            "ranking": order,
        }
        return Selection(drop, reason, details)


@dataclass(frozen=True)
class LastStrategy(Strategy):
    """Baseline: drop the n blocks just before the final block (the final n with `allow_last`).

    The literature's "drop the last layers" baseline removes the final n blocks; here the final block is
    kept by default like in every other strategy, so ``last`` removes blocks L-1-n .. L-2. With
    `allow_last` it removes the final n blocks, L-n .. L-1, exactly as in the literature.
    """

    def select(self, request: SelectRequest) -> Selection:
        num_blocks, num_drop, allow_last = request.num_blocks, request.num_drop, request.allow_last
        drop = tuple(candidate_blocks(num_blocks, allow_last)[-num_drop:])
        blocks = f"{num_drop} blocks" if num_drop > 1 else "block"
        where = f"the final {blocks}" if allow_last else f"the last {blocks} before the final block"
        reason = (
            f"baseline: {describe_blocks(drop)} {'are' if num_drop > 1 else 'is'} {where}; no score was used."
        )
        return Selection(drop, reason, {"allow_last": allow_last})


@dataclass(frozen=True)
class RandomStrategy(Strategy):
    """Baseline: n blocks drawn uniformly at random (reproducible for a given `seed`)."""

    def select(self, request: SelectRequest) -> Selection:
        num_blocks, num_drop, allow_last = request.num_blocks, request.num_drop, request.allow_last
        seed = request.seed
        candidates = candidate_blocks(num_blocks, allow_last)
        drop = tuple(sorted(random.Random(seed).sample(candidates, num_drop)))
        reason = (
            f"baseline: {describe_blocks(drop)} were drawn at random (seed {seed}) from "
            f"{describe_blocks(candidates)}; no score was used."
        )
        return Selection(drop, reason, {"seed": seed, "candidates": candidates})


SPAN = register(
    SpanStrategy(
        "span",
        "contiguous blocks whose input and output are closest (Gromov et al. 2024)",
        metrics=("angular", "cka"),
        default_metric="angular",
    )
)
TOPK = register(
    RankStrategy(
        "topk",
        "independent blocks with the most removable score (default: lowest BI, ShortGPT)",
        metrics=("bi", "angular", "cka"),
        default_metric="bi",
    )
)
CKA = register(
    RankStrategy(
        "cka",
        "blocks with the highest CKA(input, output) (RedTest: keep the least similar ones)",
        metrics=("cka",),
        default_metric="cka",
    )
)
LAST = register(
    LastStrategy("last", "baseline: the last blocks before the final one (the final ones with allow_last)")
)
RANDOM = register(RandomStrategy("random", "baseline: blocks drawn at random (seeded)"))
