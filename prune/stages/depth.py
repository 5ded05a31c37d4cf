"""The depth stages: `collect` the block statistics, `plan` which blocks go, `cut` them."""

from __future__ import annotations

import logging
import time
from typing import Any

from prune.stages.context import RunContext
from prune.vocab import SCORE_METRICS

logger = logging.getLogger(__name__)


def collect(ctx: RunContext, *, metrics: tuple[str, ...] | None = None, **collector: Any) -> RunContext:
    """Collect the block statistics over the calibration batches (``ctx.stats``, ``ctx.scores``).

    Without a depth target (width squeezing alone) nothing is collected. The metrics are what the
    strategy needs plus `prune.vocab.SCORE_METRICS`, which every report carries.

    Args:
        ctx: a context with ``loaded``, ``anatomy`` and ``calib_batches``.
        metrics: collect these instead (``prune-llm analyze`` and the benchmarks choose their own).
        collector: further `prune.collect.collect_stats` arguments (``accelerator``, ``state_path``).

    Example:
        >>> sorted(collect(calibrate(load(check(ctx)))).scores)  # doctest: +SKIP
        ['angular', 'bi', 'cka', 'cka_io']
    """
    from prune.collect import collect_stats
    from prune.plan import required_metrics
    from prune.preflight import check_counted_tokens

    options = ctx.options
    if metrics is None:
        if getattr(options, "target", None) is None:  # width only: no depth statistics are needed
            ctx.stats, ctx.scores = None, {}
            return ctx
        strategy = run_strategy(options, ctx.anatomy)
        metrics = tuple(dict.fromkeys([*required_metrics(strategy, options.metric), *SCORE_METRICS]))
    logger.info("collecting %s over %d calibration batches", ", ".join(metrics), len(ctx.calib_batches))
    ctx.stats = collect_stats(
        ctx.original,
        ctx.calib_batches,
        anatomy=ctx.anatomy,
        metrics=metrics,
        max_tokens=options.max_tokens,
        token_mode=options.token_mode,
        skip_tokens=options.skip_tokens,
        cka_minibatch=options.cka_minibatch,
        cka_window=options.cka_window,
        seed=options.seed,
        progress=ctx.progress,
        **collector,
    )
    check_counted_tokens(ctx.stats.num_tokens, options.skip_tokens)
    ctx.scores = ctx.stats.scores()
    return ctx


def run_strategy(options: Any, anatomy: Any) -> str:
    """The strategy the run uses: ``options.strategy``, with ``auto`` resolved from the run's repair.

    ``auto`` (the default) is ``span-repair`` when the run repairs with ``linear`` on a model whose MLP
    placement is known, so that the cut is the span that is best after its repair, and ``span``
    otherwise (`prune.plan.resolve_strategy`).

    Example:
        >>> from prune.options import PruneOptions
        >>> run_strategy(PruneOptions(model="m", target="drop-1", repair="none"), anatomy=None)
        'span'
    """
    from prune.errors import RepairError
    from prune.plan import resolve_strategy
    from prune.repair import get_repair

    repair = getattr(options, "repair", "none")
    mlp = getattr(anatomy, "mlp", None)
    if repair == "linear":
        try:
            get_repair("linear").check(mlp)
        except RepairError:
            mlp = None  # no map can be fitted here: the repair stage falls back to the plain cut
    return resolve_strategy(options.strategy, repair, mlp)


def plan(ctx: RunContext, *, strategy: str | None = None, metric: str | None = None) -> RunContext:
    """Choose the blocks to remove (``ctx.plan``) with the run's strategy, or the one named here.

    A strategy that evaluates the model (``get_strategy(name).needs_search``) gets a `SearchContext`
    on the calibration batches, with the run's search objective and candidate count. The run's
    ``auto`` is resolved here (`run_strategy`); ``ctx.options.strategy`` then names what was used, so
    the report, the card, ``prune_recipe.yaml`` and the recorded command line say it, and the plan's
    details keep ``strategy_requested: auto``. When ``auto`` is ``span-repair``, the run holds back
    calibration sequences (``ctx.guard_batches``) and ``auto_candidates`` names several strategies (it
    does not by default), their cuts are scored on them plain and repaired with ``linear`` and the best
    is made (``details["auto_candidates"]`` has every loss). Where ``span-repair`` finds no span with a kept
    block before it, ``auto`` falls back to ``span`` and says so in the plan's reason.

    Example:
        >>> plan(collect(calibrate(load(check(ctx))))).plan.drop  # doctest: +SKIP
        (1, 2)
    """
    from dataclasses import replace

    from prune.errors import PlanError
    from prune.plan import AUTO, Plan, get_strategy, plan_pruning

    options = ctx.options
    if options.target is None:
        ctx.plan = Plan(
            ctx.anatomy.num_blocks, (), "none", None, "none", "no depth cut (width squeezing only)", {}
        )
        return ctx
    asked = strategy or options.strategy
    chosen = run_strategy(options.model_copy(update={"strategy": asked}), ctx.anatomy)
    metric = options.metric if metric is None else metric

    def make(name: str):
        search = None
        if get_strategy(name).needs_search:
            from prune.plan import SearchContext

            search = SearchContext(
                model=ctx.original,
                batches=ctx.calib_batches,
                kind=ctx.loaded.kind,
                objective=options.search_objective,
                candidates_per_step=options.search_candidates,
                anatomy=ctx.anatomy,
                progress=ctx.progress,
            )
        return plan_pruning(
            ctx.scores,
            ctx.anatomy.num_blocks,
            options.target,
            name,
            metric=metric,
            allow_last=options.allow_last,
            seed=options.seed,
            search=search,
        )

    fallback = None
    try:
        ctx.plan = make(chosen)
    except PlanError as err:
        if asked != AUTO or chosen == "span":
            raise
        fallback, chosen = str(err), "span"
        ctx.plan = make(chosen)
    if asked == AUTO:
        compared: list[dict] = []
        started = time.perf_counter()
        if chosen == "span-repair" and ctx.guard_batches:
            ctx.plan, compared = _best_repaired_cut(ctx, ctx.plan, make)
            chosen = ctx.plan.strategy
        compare_seconds = round(time.perf_counter() - started, 3)
        if fallback:
            why = f"span-repair cannot choose here ({fallback})"
        elif chosen == "span":
            repair = getattr(options, "repair", "none")
            why = f"the run fits no linear map (repair {repair}), so the closest span is the best plain cut"
        else:
            why = "the run repairs with linear, so the cut is the one that is best after its repair"
        if compared:
            shown = ", ".join(f"{c['strategy']} {c['blocks']} {c['held_back_loss']:.4g}" for c in compared)
            why += f"; held-back calibration loss of each candidate's cut, the better of plain and linear-repaired: {shown}"
        ctx.plan = replace(
            ctx.plan,
            reason=f"{ctx.plan.reason} (auto chose {chosen}: {why})",
            details={
                "strategy_requested": AUTO,
                **({"auto_candidates": compared, "auto_seconds": compare_seconds} if compared else {}),
                **ctx.plan.details,
            },
        )
        if strategy is None:
            from prune.stages.publish import command_for

            ctx.options = options.model_copy(update={"strategy": chosen})
            if ctx.command == command_for(options):  # the equivalent command of a Python run: say it
                ctx.command = command_for(ctx.options)
    logger.info("plan: drop blocks %s (%s)", list(ctx.plan.drop), ctx.plan.reason)
    return ctx


def _best_repaired_cut(ctx: RunContext, first: Any, make: Any) -> tuple[Any, list[dict]]:
    """Of the cuts of ``auto_candidates`` (`first` is span-repair's), the one best after linear repair.

    Each distinct cut is scored on the held-back calibration sequences plain and repaired with
    ``linear`` in one pass (no refit; `prune.repair.guard.rank_repaired_cuts`); the cut whose better
    form has the lowest loss is made (the repair guard then keeps that form), ties to the earlier
    candidate. The plain ``span`` is a candidate so that where repair hurts (post-norm encoders) the
    best plain cut can win.
    """
    from prune.errors import PlanError
    from prune.repair.guard import GUARDED_KINDS, rank_repaired_cuts

    options = ctx.options
    names = [n.strip() for n in options.auto_candidates.split(",") if n.strip()]
    if ctx.loaded.kind not in GUARDED_KINDS or len(names) < 2:
        return first, []
    plans = {first.drop: first}
    for name in names:
        if name == first.strategy:
            continue
        try:
            candidate = make(name)
        except PlanError as err:  # e.g. a metric this strategy cannot rank by: not a candidate
            logger.info("auto: %s is not a candidate (%s)", name, err)
            continue
        plans.setdefault(candidate.drop, candidate)
    if len(plans) < 2:
        return first, []
    drops = list(plans)
    losses = rank_repaired_cuts(
        ctx.original,
        ctx.anatomy,
        drops,
        ctx.calib_batches,
        ctx.guard_batches,
        ctx.loaded.kind,
        objective=options.repair_objective,
        max_tokens=options.max_tokens,
        skip_tokens=options.skip_tokens,
    )
    compared = [
        {
            "strategy": plans[d].strategy,
            "blocks": list(d),
            "held_back_loss": float(f"{min(plain, repaired):.6g}"),
            "plain": float(f"{plain:.6g}"),
            "repaired": float(f"{repaired:.6g}"),
        }
        for d, (plain, repaired) in zip(drops, losses, strict=True)
    ]
    # a cut is as good as the better of its plain and repaired forms: the guard keeps that one later
    best = min(range(len(drops)), key=lambda i: (min(losses[i]), i))
    logger.info("auto: repaired cuts on held-back data: %s", compared)
    return plans[drops[best]], compared


def cut(ctx: RunContext) -> RunContext:
    """Remove the planned blocks into ``ctx.pruned`` (the original is never modified).

    A model the run loaded itself is only read (evaluated) and then dropped, so the pruned copy shares
    its tensors: the run then holds one set of weights, not two. A model the caller passed in gets a
    real copy, so that whatever they do with the result later never reaches their model.
    """
    from prune.surgery import remove_blocks

    ctx.pruned = remove_blocks(
        ctx.original, ctx.plan.drop, anatomy=ctx.anatomy, share_weights=not ctx.model_given
    )
    return ctx
