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
            refit=refit_after_cut(options.refit, ctx.anatomy),
            refit_blocks=options.refit_blocks,
            refit_attention=options.refit_attention,
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


def refit_after_cut(refit: str, anatomy) -> bool:
    """Whether the cut's repair is followed by the error-correcting refit (`RepairOptions.refit`).

    ``auto`` refits pre-norm decoders only: there the block output is the residual stream, the fit is
    exact and it measured better (benchmarks/README.md); post-norm encoders measured mixed.
    """
    if refit == "auto":
        return getattr(anatomy.mlp, "residual", None) == "pre_norm"
    return refit == "on"


def squeeze(ctx: RunContext) -> RunContext:
    """Squeeze the FFNs of ``ctx.pruned`` in place (``ctx.squeeze``), when ``ffn_keep`` asks for it.

    The statistics are taken on the model it squeezes: after the cut and its repair. With
    ``refit="on"`` the squeezed model's down projections are then refitted to track the dense original.
    """
    options = ctx.options
    if options.ffn_keep is None:
        ctx.squeeze = None
        return ctx
    from prune.anatomy import get_anatomy
    from prune.repair.refit import cut_correspondence
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
        refit=options.refit == "on",
        refit_attention=options.refit_attention,
        reference=ctx.original,
        correspondence=cut_correspondence(ctx.anatomy.num_blocks, ctx.plan.drop),
    )
    ctx.squeeze = result.report
    return ctx
