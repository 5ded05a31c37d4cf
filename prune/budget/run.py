"""The budget stage of a pruning run: choose depth and width together, build the winner.

`prune_to_budget` is what `run_pruning` calls when `PruneOptions.budget` is set; `search_budget` (in
`prune.budget.api`) runs it without saving. The search space is the run's depth strategy for every
number of blocks (with the run's repair) crossed with a uniform FFN width (multiples of 8 neurons).

Cost (the statistics a run collects anyway, plus): one FFN-statistics pass over the fit part for the
activation-energy curves that predict the width cost; then per exactly evaluated candidate one repair
pass per cut span, one FFN-statistics pass (shared by every width of the same cut) and one forward pass
over the held-back quarter. A parameter or size budget evaluates the two ends of the budget frontier,
the `exact_candidates` best predicted interior points and improving neighbours: typically 4-6
candidates. A loss budget bisects the parameter budget (about 5 frontier searches, sharing
evaluations); a latency budget adds a timed forward pass per step (about 2 steps).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prune.budget.build import CandidateBuilder, split_calibration
from prune.budget.cost import ModelCosts
from prune.budget.search import Candidate, Evaluated, SearchResult, budget_frontier, search_frontier
from prune.budget.spec import Budget, parse_budget, si_count
from prune.errors import BudgetError

logger = logging.getLogger(__name__)

MIN_KEEP_FRACTION = 0.25
LOSS_STEPS = 5
LATENCY_STEPS = 4
LATENCY_TOLERANCE = 0.05  # relative; at least twice the spread of two timings of the original


@dataclass
class BudgetOutcome:
    """What the budget stage chose and built.

    Attributes:
        plan: The depth plan of the chosen configuration.
        model: The chosen model, built as it was scored (fitted on the calibration fit part).
        repair: Its repair report.
        squeeze: Its squeeze report (None at full width).
        search: The `SearchResult` (chosen, explored frontier, reason).
    """

    plan: Any
    model: nn.Module
    repair: Any
    squeeze: Any
    search: SearchResult


def budget_strategy(strategy: str) -> str:
    """The depth strategy a budget search uses: `strategy`, with ``auto`` as the plain ``span``.

    The search builds a cut for every depth and predicts each one's loss from the angular distance
    across its span (the plain span's own statistic); fitting span-repair's candidate spans at every
    depth would cost a calibration pass per depth, and the built candidates are scored after their
    repair anyway.

    Example:
        >>> budget_strategy("auto"), budget_strategy("topk")
        ('span', 'topk')
    """
    from prune.plan import AUTO

    return "span" if strategy == AUTO else strategy


class _Search:
    """One budget search over one model: plans, costs, cheap predictions and the cached evaluations."""

    def __init__(self, options, original, anatomy, kind, fit, held, scores, search_context, progress):
        if kind not in ("causal-lm", "encoder"):
            raise BudgetError(
                f"a budget search scores candidates as a causal LM or an encoder, not a {kind!r} model; "
                "use --target/--ffn-keep instead"
            )
        self.options, self.original, self.anatomy, self.scores = options, original, anatomy, scores
        self.costs = ModelCosts.from_model(original, anatomy)
        self.d_ff = self.costs.intermediate_size
        self.multiple = 8 if self.d_ff >= 64 else 1
        self.builder = CandidateBuilder(options, original, anatomy, kind, fit, held, progress)
        self.plans = self._depth_plans(search_context)
        self.done: dict[tuple[tuple[int, ...], int], Evaluated] = {}
        self.order: list[Evaluated] = []
        self.curves = self._energy_curves(fit, progress)
        self.reference_loss = self.builder.loss(original)

    # -- the search space -------------------------------------------------------------------------
    def _depth_plans(self, search_context) -> list[Any]:
        from prune.errors import TargetError
        from prune.plan import Plan, PlanError, plan_pruning

        o, blocks = self.options, self.anatomy.num_blocks
        strategy = budget_strategy(o.strategy)
        plans = [Plan(blocks, (), strategy, None, "drop-0", "no depth cut", {})]
        for n in range(1, blocks):
            try:
                plans.append(
                    plan_pruning(
                        self.scores,
                        blocks,
                        f"drop-{n}",
                        strategy,
                        metric=o.metric,
                        allow_last=o.allow_last,
                        seed=o.seed,
                        search=search_context,
                    )
                )
            except (TargetError, PlanError):
                break
        return plans

    def candidate(self, drop: tuple[int, ...], keep: int) -> Candidate:
        return Candidate(drop, keep, self.costs.params_after(drop, keep), self.costs.bytes_after(drop, keep))

    def frontier(self, max_params: float) -> list[Candidate]:
        return budget_frontier(
            self.costs,
            [p.drop for p in self.plans],
            max_params,
            multiple=self.multiple,
            min_keep_fraction=MIN_KEEP_FRACTION,
        )

    def smallest(self) -> Candidate:
        """The smallest configuration of the search space (deepest cut, narrowest width)."""
        keep = max(self.multiple, math.ceil(MIN_KEEP_FRACTION * self.d_ff / self.multiple) * self.multiple)
        return self.candidate(self.plans[-1].drop, min(keep, self.d_ff) if self.d_ff else 0)

    # -- cheap statistics -----------------------------------------------------------------------------
    def _energy_curves(self, fit, progress) -> dict[int, Any]:
        """Pivoted-Cholesky energy curves of the original's FFNs (one pass; a sample of as many blocks as
        fit the squeeze's Gram bound, `prune.width.stats.DEFAULT_MAX_BYTES`)."""
        from prune.width.compensate import block_problem
        from prune.width.selection import energy_curve
        from prune.width.stats import block_groups, collect_ffn_stats

        if self.anatomy.mlp is None or not self.d_ff:
            return {}
        blocks = self.anatomy.num_blocks
        fits = len(block_groups(blocks, self.d_ff, None)[0])  # one squeeze pass's blocks, one Gram each
        sample = sorted({round(i * (blocks - 1) / max(fits - 1, 1)) for i in range(fits)})
        o = self.options
        stats = collect_ffn_stats(
            self.original,
            fit,
            self.anatomy,
            sample,
            max_tokens=o.max_tokens,
            skip_tokens=o.skip_tokens,
            progress=progress,
        )
        modules = self.anatomy.blocks(self.original)
        curves = {}
        for b in sample:
            moment = block_problem(self.anatomy.mlp.parts(modules[b]), stats[b]).fit_moment()
            curves[b] = energy_curve(moment, limit=0.99999)
        return curves

    def depth_cost(self, c: Candidate) -> float:
        """Angular distance across each cut span (the span strategy's own statistic), summed."""
        angular = self.scores.get("angular")
        if angular is None:
            return len(c.drop) / self.anatomy.num_blocks
        cost, spans = 0.0, _spans(c.drop)
        for first, last in spans:
            cost += float(angular[first, last + 1])
        return cost

    def width_cost(self, c: Candidate) -> float:
        """Activation energy the kept neurons lose (mean over the sampled blocks that are kept)."""
        if not self.curves or c.keep >= self.d_ff:
            return 0.0
        kept = [b for b in self.curves if b not in set(c.drop)] or list(self.curves)
        lost = [1.0 - float(self.curves[b][min(c.keep, self.curves[b].numel()) - 1]) for b in kept]
        return max(sum(lost) / len(lost), 0.0)

    def predictor(self):
        """Predicted loss increase ``a * depth_cost + b * width_cost``, fitted (a, b >= 0) on every
        evaluation so far."""
        import torch

        rows = [(self.depth_cost(e.candidate), self.width_cost(e.candidate)) for e in self.order]
        gains = [max(e.loss - self.reference_loss, 0.0) for e in self.order]
        x = torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)
        y = torch.tensor(gains, dtype=torch.float64)
        coef = torch.linalg.lstsq(x, y.unsqueeze(1), driver="gelsd").solution.flatten().clamp_min(0)
        a, b = float(coef[0]), float(coef[1])
        return lambda c: a * self.depth_cost(c) + b * self.width_cost(c)

    # -- exact evaluations ----------------------------------------------------------------------------
    def evaluate(self, c: Candidate) -> float:
        key = (c.drop, c.keep)
        if key not in self.done:
            self.done[key] = Evaluated(c, self.builder.evaluate(c))
            self.order.append(self.done[key])
        return self.done[key].loss

    def best_within(self, max_params: float, exact: int = 2) -> Evaluated:
        frontier = self.frontier(max_params)
        if not frontier:
            raise self._too_small(max_params)
        best, _, self.table = search_frontier(
            frontier,
            self.evaluate,
            reference_loss=self.reference_loss,
            depth_cost=self.depth_cost,
            width_cost=self.width_cost,
            exact_candidates=exact,
            d_ff=self.d_ff,
        )
        return best

    def _too_small(self, max_params: float) -> BudgetError:
        small = self.smallest()
        return BudgetError(
            f"no configuration fits {si_count(max_params, '')} parameters: the smallest in the search space "
            f"({small.label(self.d_ff)}, at least {MIN_KEEP_FRACTION:g} of the FFN width) has "
            f"{si_count(small.params, '')} parameters ({small.size_bytes / 1e6:.1f} MB); raise the budget to "
            f"at least that, or prune further by hand with --target/--ffn-keep"
        )


def _spans(drop: Sequence[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for i in sorted(drop):
        if spans and spans[-1][1] == i - 1:
            spans[-1] = (spans[-1][0], i)
        else:
            spans.append((i, i))
    return spans


def run_budget_search(
    options, original, anatomy, kind, calib_batches, scores, *, search_context=None, progress=False
) -> tuple[SearchResult, _Search]:
    """Search the configuration that meets ``options.budget`` (see the module docstring).

    Args:
        options: The run's `PruneOptions` (``budget`` set).
        original: The model (never modified).
        anatomy: Its anatomy.
        kind: "causal-lm" or "encoder".
        calib_batches: All calibration batches; the last quarter is held back for scoring.
        scores: The collector's scores (on the fit part) that the depth strategy ranks by.
        search_context: For strategies that evaluate (iterative, span-repair).
        progress: Show progress bars.

    Returns:
        The `SearchResult` and the search state (its builder builds the chosen model).

    Raises:
        BudgetError: a budget that no configuration meets (the closest feasible point is named).
    """
    budget = parse_budget(options.budget)
    start = time.perf_counter()
    fit, held = split_calibration(calib_batches)
    state = _Search(options, original, anatomy, kind, fit, held, scores, search_context, progress)
    total = state.costs.total_params
    info: dict[str, Any] = {}
    if budget.kind in ("params", "size"):
        limit = budget.value if budget.kind == "params" else budget.value / state.costs.bytes_per_param
        if limit >= total:
            raise BudgetError(
                f"{options.model} already meets {budget.text} ({si_count(total, '')} parameters, "
                f"{state.costs.bytes_after(()) / 1e6:.1f} MB); nothing to prune: ask for less than that"
            )
        chosen = state.best_within(limit)
        reason = f"lowest held-back loss among the configurations evaluated within {budget.describe()}"
    elif budget.kind == "loss":
        chosen, reason = _loss_search(state, budget)
    else:
        chosen, reason, info = _latency_search(state, budget)
    explored = list(state.order)
    ends = _axis_ends(state, chosen.candidate.params)
    info.update(
        search_s=time.perf_counter() - start,
        builds=state.builder.builds,
        fit_batches=len(fit),
        held_back_batches=len(held),
        d_ff=state.d_ff,
        params_before=total,
        **ends,
    )
    result = SearchResult(
        chosen=chosen,
        explored=explored,
        frontier=list(getattr(state, "table", [])),
        reference_loss=state.reference_loss,
        reason=f"{chosen.candidate.label(state.d_ff)}: {reason}",
        budget=budget,
        info=info,
    )
    return result, state


def _axis_ends(state: _Search, params: int) -> dict[str, Any]:
    """The depth-only and width-only points of the same frontier as the choice, when evaluated."""
    out: dict[str, Any] = {}
    for item in state.order:
        c = item.candidate
        if c.drop == () and c.params <= params * 1.02 and "width_only" not in out:
            out["width_only"] = {"params": c.params, "keep": c.keep, "loss": item.loss}
        if c.keep >= state.d_ff and c.params <= params * 1.02 and "depth_only" not in out:
            out["depth_only"] = {"params": c.params, "drop": list(c.drop), "loss": item.loss}
    return out


def _loss_search(state: _Search, budget: Budget) -> tuple[Evaluated, str]:
    """The smallest evaluated configuration whose held-back perplexity is within budget.value x.

    A bisection on the parameter budget: the first step searches its frontier as a parameter budget
    does; later steps build only the point the cheap costs predict best, with the prediction refitted
    on every evaluation so far (one build per step).
    """
    target = state.reference_loss + math.log(budget.value)
    total = state.costs.total_params
    lo, hi = float(state.smallest().params), float(total)
    for step in range(LOSS_STEPS):
        if hi - lo < 0.02 * total:
            break
        middle = (lo + hi) / 2
        if step == 0:
            loss = state.best_within(middle, exact=1).loss
        else:
            frontier = state.frontier(middle)
            if not frontier:
                lo = middle
                continue
            predict = state.predictor()
            loss = state.evaluate(min(frontier, key=predict))
        if loss <= target:
            hi = middle
        else:
            lo = middle
    fitting = [e for e in state.order if e.loss <= target]
    if not fitting:
        # the lightest cuts: one width step, one block
        light = [state.candidate((), state.d_ff - state.multiple)] if state.d_ff > state.multiple else []
        if len(state.plans) > 1:
            light.append(state.candidate(state.plans[1].drop, state.d_ff))
        for c in light:
            state.evaluate(c)
        fitting = [e for e in state.order if e.loss <= target]
    if not fitting:
        best = min(state.order, key=lambda e: e.loss)
        ratio = math.exp(best.loss - state.reference_loss)
        raise BudgetError(
            f"even the lightest cut breaks {budget.text}: the best of {len(state.order)} configurations tried, "
            f"{best.candidate.label(state.d_ff)}, has {ratio:.3f}x the original's held-back perplexity; the "
            f"closest feasible budget is loss:{math.ceil(ratio * 1000) / 1000:g}x (or use more calibration "
            "data, --calib-samples)"
        )
    chosen = min(fitting, key=lambda e: (e.candidate.params, e.loss))
    ratio = math.exp(chosen.loss - state.reference_loss)
    return chosen, (
        f"the fewest parameters among {len(state.order)} evaluated configurations whose held-back perplexity "
        f"stays within {budget.value:g}x the original's ({ratio:.3f}x)"
    )


def _latency_search(state: _Search, budget: Budget) -> tuple[Evaluated, str, dict[str, Any]]:
    """A parameter budget from a latency model, narrowed until the measured ratio meets the budget."""
    from prune.evaluation.speed import speed_metrics

    o = state.options

    def latency(model: nn.Module) -> float:
        return speed_metrics(model, batch_size=1, seq_len=o.seq_len, warmup=1, repeats=5)["latency_ms"]

    first, second = latency(state.original), latency(state.original)
    reference = (first + second) / 2
    tolerance = max(LATENCY_TOLERANCE, 2 * abs(first - second) / reference)
    blocks = sum(state.costs.block_params)
    outside = state.costs.total_params - blocks
    limit = outside + budget.value * blocks
    measured: list[tuple[Evaluated, float]] = []
    for _ in range(LATENCY_STEPS):
        best = state.best_within(limit)
        ratio = latency(state.builder.build(best.candidate).model) / reference
        best.latency_s = ratio * reference / 1e3
        measured.append((best, ratio))
        if ratio <= budget.value * (1 + tolerance):
            info = {"latency_reference_ms": reference, "latency_ratio": ratio, "latency_tolerance": tolerance}
            return (
                best,
                f"lowest held-back loss within the parameter budget {si_count(limit, '')} whose measured latency "
                f"is {ratio:.3f}x the original's (budget {budget.value:g}x, tolerance {tolerance:.0%})",
                info,
            )
        # latency is roughly affine in the blocks' parameters: shrink the block part by the excess
        limit = outside + (limit - outside) * budget.value / ratio * 0.98
        if limit < state.smallest().params:
            break
    best, ratio = min(measured, key=lambda m: m[1])
    raise BudgetError(
        f"no configuration met {budget.text} on this machine: the fastest measured "
        f"({best.candidate.label(state.d_ff)}, {si_count(best.candidate.params, '')} parameters) runs at "
        f"{ratio:.3f}x the original's latency; the closest feasible budget is latency:{math.ceil(ratio * 100) / 100:g}x"
    )


def prune_to_budget(
    options,
    original,
    anatomy,
    kind,
    calib_batches,
    scores,
    *,
    search_context=None,
    copy_result: bool = False,
    progress=False,
) -> BudgetOutcome:
    """Search ``options.budget`` and build the chosen model (as it was scored).

    Arguments as for `run_budget_search`; `copy_result` gives the result its own tensors (by default the
    unchanged ones are shared with `original`, which is only read).
    """
    result, state = run_budget_search(
        options,
        original,
        anatomy,
        kind,
        calib_batches,
        scores,
        search_context=search_context,
        progress=progress,
    )
    chosen = result.chosen.candidate
    built = state.builder.build(chosen)
    if copy_result:
        import copy

        built.model = copy.deepcopy(built.model)
    plan = next(p for p in state.plans if p.drop == chosen.drop)
    from dataclasses import replace

    plan = replace(plan, target=options.budget, reason=f"{plan.reason}; budget search: {result.reason}")
    return BudgetOutcome(
        plan=plan, model=built.model, repair=built.repair, squeeze=built.squeeze, search=result
    )


__all__ = ["BudgetOutcome", "prune_to_budget", "run_budget_search"]
