"""`plan_pruning`: from scores and a target to the blocks to remove."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prune.errors import PlanError
from prune.plan.base import STRATEGIES, Plan, SelectRequest, Strategy
from prune.plan.targets import parse_target

if TYPE_CHECKING:
    from torch import Tensor

    from prune.plan.search_context import SearchContext

# Other spellings users reach for; "cka_io" is the collector's name of the per-block CKA score.
_METRIC_ALIASES = {"cka_io": "cka"}

# `PlanOptions.strategy`'s default: not a strategy of its own, a choice made from the run's repair.
AUTO = "auto"
# What "auto" becomes: the span that is best after the repair when the run fits a least-squares map
# (measured: SmolLM2-135M 30 -> 21, span + linear 519.6 vs span-repair + linear 85.3 held-out
# perplexity, benchmarks/README.md), the plain span otherwise (no repair, or one it cannot rank by).
AUTO_REPAIRED, AUTO_PLAIN = "span-repair", "span"


def resolve_strategy(strategy: str, repair: str = "none", mlp: object = None) -> str:
    """The strategy a run uses: `strategy` itself, or what ``auto`` stands for with this repair.

    ``auto`` is ``span-repair`` (among the closest spans by angular distance, the one with the lowest
    error after ``linear`` repair) when the run repairs with ``linear`` and the model's MLP placement is
    known (`mlp`, the anatomy's `MlpAnatomy`: the map needs it), and ``span`` otherwise: with
    ``--repair none`` or ``scale`` the closest span is the best plain cut.

    Args:
        strategy: a strategy name, or ``auto``.
        repair: the run's repair method (``linear``, ``scale``, ``none``).
        mlp: the model's MLP anatomy (None: unknown, so no map can be fitted).

    Example:
        >>> resolve_strategy("auto", "linear", mlp=object()), resolve_strategy("auto", "none")
        ('span-repair', 'span')
        >>> resolve_strategy("topk", "linear", mlp=object())
        'topk'
    """
    if strategy != AUTO:
        return strategy
    return AUTO_REPAIRED if repair == "linear" and mlp is not None else AUTO_PLAIN


def get_strategy(name: str) -> Strategy:
    """The registered strategy `name`, or a PlanError that lists the valid names.

    ``auto`` is resolved first (`resolve_strategy`); asked for here it means its plain form, ``span``,
    whose scores and search needs are the same as ``span-repair``'s scores.
    """
    if name == AUTO:
        name = AUTO_PLAIN
    try:
        return STRATEGIES.get(name)
    except KeyError as err:
        raise PlanError(f"{err.args[0]} (--strategy; or auto)") from None


def _metric(strategy: Strategy, metric: str | None) -> str | None:
    if metric is not None:
        metric = _METRIC_ALIASES.get(metric.strip().lower(), metric.strip().lower())
    return strategy.resolve_metric(metric)


def required_metrics(strategy: str, metric: str | None = None) -> tuple[str, ...]:
    """The metrics `prune.collect.collect_stats` must gather for `strategy` ranking by `metric`.

    Args:
        strategy: a registered strategy name (``span``, ``topk``, ``cka``, ``iterative``, ``last``, ``random``),
            or ``auto`` (whichever it resolves to: ``span`` and ``span-repair`` rank by the same scores).
        metric: the metric to rank by, or None for the strategy's default.

    Returns:
        Metric names for ``collect_stats(metrics=...)``; empty for the baselines that use no score.

    Raises:
        PlanError: unknown strategy, or a metric the strategy cannot rank by.

    Example:
        >>> required_metrics("span"), required_metrics("topk", "cka"), required_metrics("random")
        (('angular',), ('cka_io',), ())
    """
    chosen = get_strategy(strategy)
    return chosen.required_metrics(_metric(chosen, metric))


def plan_pruning(
    scores: Mapping[str, Tensor],
    num_blocks: int,
    target: str,
    strategy: str = "span",
    *,
    metric: str | None = None,
    allow_last: bool = False,
    seed: int = 0,
    search: SearchContext | None = None,
) -> Plan:
    """Choose the blocks to remove for `target` with `strategy`.

    Args:
        scores: the collector's scores by metric name (``LayerStats.scores()``): "bi" [L], "angular"
            [L+1, L+1], "cka" [L+1, L+1], "cka_io" [L]; only those the strategy needs must be there.
        num_blocks: how many blocks the model has (L).
        target: ``"N-layers"``, ``"drop-N"`` or ``"P%"`` (see `parse_target`).
        strategy: ``span`` (default), ``topk``, ``cka``, ``iterative``, ``last`` or ``random``.
        metric: what ``topk``/``iterative`` rank by (``bi``, ``angular``, ``cka``), or ``span``'s distance
            (``angular``, ``cka``); None for the strategy's default.
        allow_last: let the last block be removed (it is kept by default).
        seed: seed of the ``random`` strategy.
        search: model and calibration batches for strategies that evaluate candidates (``iterative``).

    Returns:
        The `Plan`: sorted blocks to drop, the reason with its numbers, and JSON-able details.

    Raises:
        TargetError: bad target. PlanError: unknown strategy or metric, missing or malformed scores,
            or no `search` for a strategy that needs one.

    Example:
        >>> import torch
        >>> angular = torch.tensor([[0.0, 0.5, 0.6], [0.5, 0.0, 0.1], [0.6, 0.1, 0.0]])
        >>> plan_pruning({"angular": angular}, 2, "drop-1", "span", allow_last=True).drop
        (1,)
    """
    if strategy == AUTO:
        raise PlanError(
            "strategy 'auto' depends on the run's repair; resolve it first with "
            "prune.plan.resolve_strategy('auto', repair, anatomy.mlp), or name a strategy (span, span-repair, ...)"
        )
    chosen = get_strategy(strategy)
    resolved = _metric(chosen, metric)
    if not isinstance(scores, Mapping):
        raise PlanError(
            f"scores must be a dict of metric name -> tensor, got {type(scores).__name__}; pass stats.scores()"
        )
    num_drop = parse_target(target, num_blocks)
    if chosen.needs_search and search is None:
        raise PlanError(
            f"strategy {chosen.name!r} evaluates the model on calibration data; pass "
            "search=prune.plan.SearchContext(model, batches, kind=...), or pick a score-based strategy (span, topk)"
        )
    request = SelectRequest(scores, num_blocks, num_drop, resolved, allow_last, seed, search)
    selection = chosen.select(request)
    if len(set(selection.drop)) != num_drop:  # a strategy bug, not bad input
        raise AssertionError(f"strategy {chosen.name!r} chose {list(selection.drop)} for {num_drop} blocks")
    return Plan(
        num_blocks=num_blocks,
        drop=selection.drop,
        strategy=chosen.name,
        metric=resolved,
        target=target,
        reason=selection.reason,
        details={"num_drop": num_drop, "allow_last": allow_last, **selection.details},
    )
