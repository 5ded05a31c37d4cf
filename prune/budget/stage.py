"""The budget stage of a run: with ``budget`` set it replaces plan, cut, repair and squeeze.

It reads the `prune.options.BudgetOptions` group (and the plan, repair and width groups the candidates
are built with; the default strategy ``auto`` is the plain ``span`` here), holds back the last quarter of ``ctx.calib_batches`` for scoring, collects the depth
statistics on the rest (`prune.stages.collect`), searches (`prune.budget.run`) and leaves the chosen
model, built exactly as it was scored, in ``ctx.pruned`` with its ``plan``, ``repair``, ``squeeze`` and
``budget`` (the `SearchResult`).

Example:
    >>> from prune import stages
    >>> ctx = stages.RunContext(PruneOptions(model="smollm2-135m", budget="params:100M"))  # doctest: +SKIP
    >>> for stage in stages.BUDGET_STAGES:  # doctest: +SKIP
    ...     ctx = stage(ctx)
"""

from __future__ import annotations

from typing import Any


def budget(ctx: Any, *, build: bool = True) -> Any:
    """Search ``ctx.options.budget`` and build the choice into the context (see the module docstring).

    Args:
        ctx: A context with ``loaded``, ``anatomy`` and ``calib_batches``.
        build: Build the chosen model into ``ctx.pruned``; False only searches (``ctx.budget``).
    """
    from prune.budget.build import split_calibration
    from prune.budget.run import budget_strategy, prune_to_budget, run_budget_search
    from prune.plan import SearchContext, get_strategy, required_metrics
    from prune.stages.depth import collect
    from prune.vocab import SCORE_METRICS

    strategy = budget_strategy(ctx.options.strategy)
    if strategy != ctx.options.strategy:  # auto: the plain span here
        ctx.options = ctx.options.model_copy(update={"strategy": strategy})
    options = ctx.options
    everything = ctx.calib_batches
    fit, _ = split_calibration(everything)
    # the depth statistics and every fit see only the fit part; the held-back part only scores
    ctx.calib_batches = fit
    try:
        metrics = tuple(dict.fromkeys([*required_metrics(options.strategy, options.metric), *SCORE_METRICS]))
        ctx = collect(ctx, metrics=metrics)
    finally:
        ctx.calib_batches = everything
    search = None
    if get_strategy(options.strategy).needs_search:
        search = SearchContext(
            model=ctx.original,
            batches=fit,
            kind=ctx.loaded.kind,
            objective=options.search_objective,
            candidates_per_step=options.search_candidates,
            anatomy=ctx.anatomy,
        )
    if not build:
        ctx.budget, _ = run_budget_search(
            options,
            ctx.original,
            ctx.anatomy,
            ctx.loaded.kind,
            everything,
            ctx.scores,
            search_context=search,
            progress=ctx.progress,
        )
        return ctx
    outcome = prune_to_budget(
        options,
        ctx.original,
        ctx.anatomy,
        ctx.loaded.kind,
        everything,
        ctx.scores,
        search_context=search,
        copy_result=ctx.model_given,
        progress=ctx.progress,
    )
    ctx.plan, ctx.pruned, ctx.repair, ctx.squeeze = (
        outcome.plan,
        outcome.model,
        outcome.repair,
        outcome.squeeze,
    )
    ctx.budget = outcome.search
    return ctx


__all__ = ["budget"]
