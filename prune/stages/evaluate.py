"""The stages that measure and explain: `evaluate` (original vs pruned, same data and protocol) and
`report` (the JSON-able report every output carries)."""

from __future__ import annotations

from typing import Any

from prune.stages.context import RunContext
from prune.vocab import ModelKind


def evaluate(ctx: RunContext) -> RunContext:
    """Compare the original and the pruned model on the held-out texts (``ctx.comparison``); nothing
    with ``eval: none``."""
    eval_texts = ctx.checked.eval_texts
    ctx.comparison, ctx.eval_info = None, {}
    if eval_texts is None:
        return ctx
    from prune.evaluation import compare_models

    options = ctx.options
    ctx.comparison = compare_models(
        ctx.original,
        ctx.pruned,
        ctx.tokenizer,
        kind=ctx.loaded.kind,
        eval_texts=eval_texts,
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.eval_samples,
        probe=options.eval_probe and ctx.loaded.kind == ModelKind.ENCODER,
        seed=options.seed,
        progress=ctx.progress,
    )
    ctx.eval_info = {
        "eval": options.eval,
        "eval_texts": len(eval_texts),
        "eval_samples": options.eval_samples,
    }
    return ctx


def report(ctx: RunContext) -> RunContext:
    """Assemble ``ctx.report`` from the context: the model before/after, the plan, the scores (read
    through `prune.scores`, MSRS with the run's beta and eps), the data, the evaluation, the repair
    and the squeeze, and the command or recipe that reproduces the run."""
    from prune.report import build_report
    from prune.scores import split_scores, summarise_msrs

    options, stats, squeeze = ctx.options, ctx.stats, ctx.squeeze
    per_block, matrices = split_scores(ctx.scores or {})
    extra: dict[str, Any] = {"matrices": matrices}
    msrs = summarise_msrs(ctx.scores or {}, beta=options.beta, eps=options.eps)
    if msrs is not None:
        extra["msrs"] = msrs
    if squeeze is not None:
        extra["squeeze"] = squeeze.to_dict()
    data = {
        "calib": options.calib,
        "calib_samples": options.calib_samples,
        "seq_len": options.seq_len,
        "calib_tokens": stats.num_tokens if stats is not None else (squeeze.num_tokens if squeeze else 0),
        "skip_tokens": options.skip_tokens,
        "cka_minibatch": options.cka_minibatch,
        "cka_window": options.cka_window,
        **(ctx.eval_info or {}),
    }
    ctx.report = build_report(
        model_info=_model_info(ctx),
        plan=ctx.plan.to_dict(),
        scores=per_block,
        evaluation=ctx.comparison.to_dict() if ctx.comparison is not None else None,
        data=data,
        command=ctx.command,
        extra=extra,
    )
    if ctx.repair is not None:
        ctx.report["repair"] = ctx.repair.to_dict()
    if ctx.budget is not None:
        ctx.report["budget"] = ctx.budget.to_dict(ctx.budget.info.get("d_ff", 0))
    return ctx


def _model_info(ctx: RunContext) -> dict[str, Any]:
    from prune.sizes import parameter_bytes, parameter_count

    loaded, anatomy, original, pruned = ctx.loaded, ctx.anatomy, ctx.original, ctx.pruned
    return {
        "spec": loaded.source.spec,
        "hub_id": loaded.source.hub_id,
        "source": loaded.source.kind,
        "kind": loaded.kind,
        "family": anatomy.family,
        "architecture": type(original).__name__,
        "block_path": anatomy.block_path,
        "num_blocks_before": anatomy.num_blocks,
        "num_blocks_after": len(ctx.plan.keep),
        "params_before": parameter_count(original),
        "params_after": parameter_count(pruned),
        "size_bytes_before": parameter_bytes(original),
        "size_bytes_after": parameter_bytes(pruned),
    }
