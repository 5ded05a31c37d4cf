"""The stages that improve the cut model in place, without training: `repair` and `squeeze`."""

from __future__ import annotations

import logging

from prune.stages.context import RunContext

logger = logging.getLogger(__name__)


def repair(ctx: RunContext) -> RunContext:
    """Fold the repair of the cut into ``ctx.pruned`` (``ctx.repair`` reports it), guarded.

    The default ``linear`` falls back to the plain cut, with a warning, on a model whose MLP placement
    is unknown; a method asked for by name fails there. With ``repair_guard`` (the default) the repaired
    model is then scored against the plain cut on ``ctx.guard_batches`` (`prune.repair.guard`), and
    the plain cut is kept when the repair made it worse; ``ctx.repair.guard`` holds both figures.
    """
    from prune.repair import repair_from_options

    reason = _guard_reason(ctx)
    plain = _plain_cut(ctx, share_weights=True) if reason is None else None
    report = repair_from_options(
        ctx.original,
        ctx.pruned,
        ctx.plan.drop,
        ctx.calib_batches,
        ctx.options,
        anatomy=ctx.anatomy,
        progress=ctx.progress,
    )
    for span in report.spans:
        logger.info("repair of blocks %d-%d: %s", span.first, span.last, span.skipped or span.map)
    if report.applied:
        _guard(ctx, report, plain, reason)
    ctx.repair = report
    return ctx


def _guard_reason(ctx: RunContext) -> str | None:
    """Why this run's repair is not guarded (None: it is)."""
    from prune.repair.guard import GUARDED_KINDS

    options = ctx.options
    if not getattr(options, "repair_guard", False) or options.repair == "none" or not ctx.plan.drop:
        return "off"
    if ctx.loaded.kind not in GUARDED_KINDS:
        return f"a {ctx.loaded.kind} model has no held-back loss (causal LMs and encoders do)"
    if not ctx.guard_batches:
        return (
            "the calibration text holds no sequences beyond --calib-samples to hold back; give more "
            "calibration text or lower --calib-samples"
        )
    return None


def _plain_cut(ctx: RunContext, *, share_weights: bool):
    from prune.surgery import remove_blocks

    return remove_blocks(ctx.original, ctx.plan.drop, anatomy=ctx.anatomy, share_weights=share_weights)


def _guard(ctx: RunContext, report, plain, reason: str | None) -> None:
    """Compare the repaired ``ctx.pruned`` with `plain` on held-back data; keep the better (in `report`).

    `reason` is `_guard_reason`'s: why the run is not guarded (None: it is)."""
    from prune.repair.guard import guard_repair

    if reason is not None:
        if reason != "off":
            report.warnings.append(f"the repair was not checked against the plain cut: {reason}")
        return
    result = guard_repair(ctx.original, plain, ctx.pruned, ctx.guard_batches, ctx.loaded.kind)
    report.guard = result.to_dict()
    report.seconds += result.seconds
    logger.info(
        "repair guard (%s on %d held-back sequences): plain cut %.4f, repaired %.4f -> %s kept",
        result.measure,
        result.sequences,
        result.loss_plain,
        result.loss_repaired,
        result.kept,
    )
    if result.kept == "plain":
        # the shared-weight plain cut is the result, unless the caller's model must not share tensors
        ctx.pruned = _plain_cut(ctx, share_weights=False) if ctx.model_given else plain
        report.keep_plain_cut()
        report.warnings.append(
            f"the repair made the cut worse on {result.sequences} held-back calibration sequences "
            f"({result.measure} {result.loss_plain:.4g} plain vs {result.loss_repaired:.4g} repaired), so the "
            "plain cut was kept (--no-repair-guard keeps the repair)"
        )


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
