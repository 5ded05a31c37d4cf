"""The stages that improve the cut model in place, without training: `repair` and `squeeze`."""

from __future__ import annotations

import logging

from prune.stages.context import RunContext

logger = logging.getLogger(__name__)


def repair(ctx: RunContext) -> RunContext:
    """Fold the repair of the cut into ``ctx.pruned`` (``ctx.repair`` reports it).

    The default ``linear`` falls back to the plain cut, with a warning, on a model whose MLP placement
    is unknown; a method asked for by name fails there.
    """
    from prune.errors import RepairError
    from prune.repair import RepairReport, repair_cut

    options = ctx.options
    try:
        report = repair_cut(
            ctx.original,
            ctx.pruned,
            ctx.plan.drop,
            ctx.calib_batches,
            method=options.repair,
            anatomy=ctx.anatomy,
            order=options.repair_order,
            objective=options.repair_objective,
            max_tokens=options.max_tokens,
            skip_tokens=options.skip_tokens,
            progress=ctx.progress,
        )
    except RepairError as err:
        if "repair" in options.model_fields_set:
            raise
        logger.warning("not repaired: %s", err)
        report = RepairReport("none", options.repair_order, options.repair_objective, warnings=[str(err)])
    for span in report.spans:
        logger.info("repair of blocks %d-%d: %s", span.first, span.last, span.skipped or span.map)
    ctx.repair = report
    return ctx


def squeeze(ctx: RunContext) -> RunContext:
    """Squeeze the FFNs of ``ctx.pruned`` in place (``ctx.squeeze``), when ``ffn_keep`` asks for it.

    The statistics are taken on the model it squeezes: after the cut and its repair.
    """
    options = ctx.options
    if options.ffn_keep is None:
        ctx.squeeze = None
        return ctx
    from prune.anatomy import get_anatomy
    from prune.width import squeeze_model

    result = squeeze_model(
        ctx.pruned,
        ctx.calib_batches,
        keep=options.ffn_keep,
        method=options.ffn_method,
        anatomy=get_anatomy(ctx.pruned, options.block_path),
        ridge=options.ffn_ridge,
        block_group=options.ffn_block_group,
        max_tokens=options.max_tokens,
        skip_tokens=options.skip_tokens,
        inplace=True,
        progress=ctx.progress,
    )
    ctx.squeeze = result.report
    return ctx
