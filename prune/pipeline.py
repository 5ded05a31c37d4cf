"""The whole pruning run in one call: load, collect, plan, cut, evaluate, save, push.

The CLI (`prune-llm MODEL --target ...`, `prune-llm run RECIPE`) is a thin layer over `run_pruning`;
Python users call it the same way, or call the steps themselves (`prune.get_anatomy`,
`prune.collect_stats`, `prune.plan_pruning`, `prune.remove_blocks`) on any model, custom ones included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune.options import PruneOptions

logger = logging.getLogger(__name__)

# Scores that every report carries, whatever the strategy needs: one pass collects them all for a few
# percent over the forward pass (benchmarks/README.md), and they tell the story (MSRS comes from cka).
REPORT_METRICS = ("bi", "angular", "cka", "cka_io")


@dataclass
class PruneResult:
    """What a pruning run produced.

    Attributes:
        model: the pruned model (a new object unless the run was told to prune in place).
        tokenizer: the tokenizer, unchanged.
        plan: the `prune.plan.Plan` that was applied.
        scores: per-metric scores from the collector (tensors).
        report: the JSON-able report (also written as ``prune_report.json`` when saved).
        out_dir: where the model was saved, if it was.
        hub_url: where it was pushed, if it was.
        gguf: the `prune.gguf_export.GGUFExport` written beside `out_dir`, if one was asked for.
    """

    model: nn.Module
    tokenizer: Any
    plan: Any
    scores: dict[str, torch.Tensor]
    report: dict[str, Any]
    out_dir: Path | None = None
    hub_url: str | None = None
    comparison: Any = field(default=None, repr=False)
    gguf: Any = None


def _model_info(loaded, anatomy, original: nn.Module, pruned: nn.Module, num_kept: int) -> dict[str, Any]:
    from prune.report import parameter_bytes, parameter_count

    return {
        "spec": loaded.source.spec,
        "hub_id": loaded.source.hub_id,
        "source": loaded.source.kind,
        "kind": loaded.kind,
        "family": anatomy.family,
        "architecture": type(original).__name__,
        "block_path": anatomy.block_path,
        "num_blocks_before": anatomy.num_blocks,
        "num_blocks_after": num_kept,
        "params_before": parameter_count(original),
        "params_after": parameter_count(pruned),
        "size_bytes_before": parameter_bytes(original),
        "size_bytes_after": parameter_bytes(pruned),
    }


def _wrap_model(model: nn.Module, tokenizer: Any, name: str):
    """A `LoadedModel` for a model the user already holds."""
    from prune.loading import LoadedModel, ModelSource, model_kind

    hub_id = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    source = ModelSource(spec=name, kind="local", location=name, gguf_file=None, alias=None, hub_id=hub_id)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, kind=model_kind(model))


def run_pruning(
    options: PruneOptions,
    *,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    command: str | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune a model end to end as `options` say.

    Args:
        options: the run's options (the same the CLI flags and recipes give).
        model: a model you already hold (then `options.model` is only its display name); loaded from
            `options.model` otherwise. It is never modified.
        tokenizer: its tokenizer (required with `model` unless the model was loaded here).
        command: the command line to record in the report and model card.
        progress: show progress bars.

    Returns:
        A `PruneResult` with the pruned model, the plan, the scores and the report.

    Example:
        >>> from prune import PruneOptions, run_pruning
        >>> result = run_pruning(PruneOptions(model="minilm-l6", target="4-layers", out="pruned"))  # doctest: +SKIP
        >>> result.plan.drop  # doctest: +SKIP
        (1, 2)
    """
    from prune.anatomy import get_anatomy
    from prune.collect import collect_stats
    from prune.data import make_batches
    from prune.loading import load_model
    from prune.plan import parse_target, plan_pruning, required_metrics
    from prune.preflight import check_counted_tokens, preflight, resolve_out
    from prune.repair import get_repair

    # Everything that can be checked before the expensive work is checked first (target, output,
    # token, config, all the data), so a bad flag never costs a model load or a calibration pass.
    get_repair(options.repair)  # a misspelt repair method
    _check_gguf(options, resolve_out(options.out, options.push_to_hub))
    checked = preflight(options, model_given=model is not None)
    out = checked.out
    if model is None:
        loaded = load_model(
            checked.source,
            device=options.device,
            dtype=options.dtype,
            trust_remote_code=options.trust_remote_code,
            device_map=options.device_map,
            progress=progress,
        )
    else:
        loaded = _wrap_model(model, tokenizer, options.model)
    original = loaded.model
    anatomy = get_anatomy(original, options.block_path)
    if options.target is not None:
        parse_target(options.target, anatomy.num_blocks)
    if options.ffn_keep is not None:
        anatomy.require_mlp("--ffn-keep (width squeezing)")
    _check_gguf(options, out, architecture=type(original).__name__)
    if model is not None:
        from prune.finite import check_finite_weights

        check_finite_weights(original, block_path=anatomy.block_path, name=options.model)
    tokenizer = _checked_tokenizer(loaded, model is not None)

    packed = loaded.kind == "causal-lm"
    calib_batches = make_batches(
        tokenizer,
        checked.calib_texts,
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.calib_samples,
        packed=packed,
    )
    all_calib = calib_batches
    if options.budget is not None:
        from prune.budget.build import split_calibration

        # the budget search scores on a held-back part: nothing is fitted or ranked on it
        calib_batches, _ = split_calibration(calib_batches)
    if options.target is None and options.budget is None:
        # width only: no depth statistics are needed
        plan, scores, stats, budget = _no_cut(anatomy.num_blocks), {}, None, None
    else:
        metrics = tuple(dict.fromkeys([*required_metrics(options.strategy, options.metric), *REPORT_METRICS]))
        logger.info("collecting %s over %d calibration batches", ", ".join(metrics), len(calib_batches))
        stats = collect_stats(
            original,
            calib_batches,
            anatomy=anatomy,
            metrics=metrics,
            max_tokens=options.max_tokens,
            skip_tokens=options.skip_tokens,
            cka_minibatch=options.cka_minibatch,
            cka_window=options.cka_window,
            seed=options.seed,
            progress=progress,
        )
        check_counted_tokens(stats.num_tokens, options.skip_tokens)
        scores = stats.scores()

        search, budget = None, None
        if _strategy_needs_search(options.strategy):
            from prune.plan.search import SearchContext

            search = SearchContext(model=original, batches=calib_batches, kind=loaded.kind, anatomy=anatomy)
        if options.budget is not None:
            from prune.budget.run import prune_to_budget

            budget = prune_to_budget(
                options,
                original,
                anatomy,
                loaded.kind,
                all_calib,
                scores,
                search_context=search,
                copy_result=model is not None,
                progress=progress,
            )
        plan = (
            budget.plan
            if budget is not None
            else plan_pruning(
                scores,
                anatomy.num_blocks,
                options.target,
                options.strategy,
                metric=options.metric,
                allow_last=options.allow_last,
                seed=options.seed,
                search=search,
            )
        )
    logger.info("plan: drop blocks %s (%s)", list(plan.drop), plan.reason)
    if budget is not None:  # built by the budget stage exactly as it was scored
        pruned, repair, squeeze = budget.model, budget.repair, budget.squeeze
    else:
        pruned, repair, squeeze = _build(options, original, plan, anatomy, calib_batches, model, progress)

    comparison, eval_info = None, {}
    if checked.eval_texts is not None:
        comparison, eval_info = _compare(
            options, original, pruned, tokenizer, loaded.kind, checked.eval_texts, progress
        )

    report = _build_report(
        options,
        loaded,
        anatomy,
        original,
        pruned,
        plan,
        scores,
        stats,
        comparison,
        eval_info,
        command,
        squeeze,
    )
    report["repair"] = repair.to_dict()
    if budget is not None:
        report["budget"] = budget.search.to_dict(budget.search.info.get("d_ff", 0))
    result = PruneResult(
        model=pruned, tokenizer=tokenizer, plan=plan, scores=scores, report=report, comparison=comparison
    )
    if out:
        result.out_dir = save_pruned(result, out, force=options.force)
        if options.gguf:
            from prune.gguf_export import export_gguf

            result.gguf = export_gguf(result.out_dir, outtype=options.gguf, force=options.force)
            result.report["gguf"] = result.gguf.to_dict()
    if options.push_to_hub:
        result.hub_url = _push(result, options, loaded.source)
    return result


def _build(options: PruneOptions, original, plan, anatomy, calib_batches, model, progress: bool):
    """Cut, repair and squeeze as `plan` and the options say."""
    from prune.surgery import remove_blocks

    # A model the pipeline loaded itself is only read (evaluated) and then dropped, so the pruned copy
    # can share its tensors: the run then holds one set of weights, not two. A model the caller passed
    # in gets a real copy, so that whatever they do with the result later never reaches their model.
    pruned = remove_blocks(original, plan.drop, anatomy=anatomy, share_weights=model is None)
    repair = _repair(options, original, pruned, plan, anatomy, calib_batches, progress)
    # the squeeze measures the model it squeezes: after the cut and its repair
    squeeze = _squeeze(options, pruned, calib_batches, progress) if options.ffn_keep is not None else None
    return pruned, repair, squeeze


def _repair(options: PruneOptions, original, pruned, plan, anatomy, batches, progress: bool):
    """Fold the repair into `pruned` (the default ``linear`` falls back to the plain cut, with a warning,
    on a model whose MLP placement is unknown; a method asked for by name fails there)."""
    from prune.repair import RepairError, RepairReport, repair_cut

    try:
        report = repair_cut(
            original,
            pruned,
            plan.drop,
            batches,
            method=options.repair,
            anatomy=anatomy,
            order=options.repair_order,
            objective=options.repair_objective,
            max_tokens=options.max_tokens,
            skip_tokens=options.skip_tokens,
            progress=progress,
        )
    except RepairError as err:
        if "repair" in options.model_fields_set:
            raise
        logger.warning("not repaired: %s", err)
        report = RepairReport("none", options.repair_order, options.repair_objective, warnings=[str(err)])
    for span in report.spans:
        logger.info("repair of blocks %d-%d: %s", span.first, span.last, span.skipped or span.map)
    return report


def _check_gguf(options: PruneOptions, out: str | None, architecture: str | None = None) -> None:
    """With --gguf, fail before the expensive work: no --out, converter missing, family unsupported, file there."""
    if not options.gguf:
        return
    from prune.errors import PruneError
    from prune.gguf_export import check_gguf_export, default_gguf_path

    if not out:
        raise PruneError(
            "--gguf writes the GGUF beside the saved folder: pass --out DIR too (nothing was done)"
        )
    check_gguf_export(architecture, options.gguf, default_gguf_path(out, options.gguf), force=options.force)


def _no_cut(num_blocks: int):
    from prune.plan import Plan

    return Plan(num_blocks, (), "none", None, "none", "no depth cut (width squeezing only)", {})


def _squeeze(options: PruneOptions, pruned: nn.Module, calib_batches, progress: bool):
    """Squeeze the FFNs of the (cut) model in place; statistics are taken on it, after the cut."""
    from prune.anatomy import get_anatomy
    from prune.width import squeeze_model

    result = squeeze_model(
        pruned,
        calib_batches,
        keep=options.ffn_keep,
        method=options.ffn_method,
        anatomy=get_anatomy(pruned, options.block_path),
        ridge=options.ffn_ridge,
        block_group=options.ffn_block_group,
        max_tokens=options.max_tokens,
        skip_tokens=options.skip_tokens,
        inplace=True,
        progress=progress,
    )
    return result.report


def _strategy_needs_search(strategy: str) -> bool:
    from prune.plan import STRATEGIES

    entry = STRATEGIES.get(strategy) if strategy in STRATEGIES else None
    return bool(getattr(entry, "needs_search", False))


def _checked_tokenizer(loaded, given: bool):
    """The run's tokenizer: one that can represent real text (an empty one would turn every word into
    [UNK], and be saved with the model), or an error that says why there is none."""
    from prune.checkpoint import tokenizer_problem
    from prune.errors import DataError

    if given:
        problem = tokenizer_problem(loaded.tokenizer)
        if problem is not None:
            raise DataError(
                f"the tokenizer passed in cannot be used: {problem}; pass tokenizer= with the model's real "
                "tokenizer, or build batches yourself and call prune.collect_stats / prune.plan_pruning / "
                "prune.remove_blocks"
            )
        return loaded.tokenizer
    return loaded.require_tokenizer()


def _compare(options: PruneOptions, original, pruned, tokenizer, kind, eval_texts, progress: bool):
    from prune.evaluation import compare_models

    comparison = compare_models(
        original,
        pruned,
        tokenizer,
        kind=kind,
        eval_texts=eval_texts,
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.eval_samples,
        probe=options.eval_probe and kind == "encoder",
        seed=options.seed,
        progress=progress,
    )
    return comparison, {
        "eval": options.eval,
        "eval_texts": len(eval_texts),
        "eval_samples": options.eval_samples,
    }


def _build_report(
    options,
    loaded,
    anatomy,
    original,
    pruned,
    plan,
    scores,
    stats,
    comparison,
    eval_info,
    command,
    squeeze=None,
):
    from prune.report import build_report

    per_block = {name: value for name, value in scores.items() if value.dim() == 1}
    matrices = {name: value for name, value in scores.items() if value.dim() == 2}
    extra: dict[str, Any] = {"matrices": matrices}
    if "cka" in scores:
        from prune.metrics import msrs

        raw, normalised = msrs(scores["cka"][1:, 1:])
        extra["msrs"] = {"raw": raw, "normalised": normalised, "beta": 100.0, "eps": 0.8}
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
        **eval_info,
    }
    return build_report(
        model_info=_model_info(loaded, anatomy, original, pruned, len(plan.keep)),
        plan=plan.to_dict(),
        scores=per_block,
        evaluation=comparison.to_dict() if comparison is not None else None,
        data=data,
        command=command,
        extra=extra,
    )


def save_pruned(result: PruneResult, out: str | Path, *, force: bool = False) -> Path:
    """Save a pruned model, its tokenizer and its report into `out`, atomically.

    The folder appears complete or not at all; an existing folder is replaced only with `force`.

    Args:
        result: what `run_pruning` returned.
        out: the folder to write.
        force: replace `out` if it exists.
    """
    from prune.output import atomic_output_dir, save_model
    from prune.report import folder_bytes, write_report

    with atomic_output_dir(out, force=force) as tmp:
        save_model(result.model, result.tokenizer, tmp)
        result.report["model"]["size_on_disk_after"] = folder_bytes(tmp)
        write_report(result.report, tmp)
        _write_plots(result, tmp)
    return Path(out)


def _write_plots(result: PruneResult, folder: Path) -> None:
    """Per-block scores with the removed blocks marked, and the before/after metrics (needs matplotlib)."""
    try:
        from prune.plots import plot_before_after, plot_block_scores
    except ImportError:  # pragma: no cover - plots module is part of the package
        return
    from prune.errors import PruneError

    try:
        name = result.report["model"]["spec"]
        if result.scores:
            plot_block_scores(
                result.scores,
                folder / "block_scores.png",
                removed=list(result.plan.drop),
                title=f"{name}: per-block scores (removed blocks marked)",
            )
        squeeze = result.report.get("squeeze")
        if squeeze and squeeze["blocks"] and squeeze["blocks"][0]["neurons_for_energy"]:
            from prune.plots import plot_neurons_needed

            plot_neurons_needed(
                [b["neurons_for_energy"] for b in squeeze["blocks"]],
                squeeze["size_before"],
                folder / "ffn_neurons_needed.png",
                kept=squeeze["kept"],
            )
        if result.report.get("budget"):
            from prune.budget.report import plot_budget_frontier

            plot_budget_frontier(result.report["budget"], folder / "budget_frontier.png")
        if result.comparison is not None:
            plot_before_after(
                result.comparison.before,
                result.comparison.after,
                folder / "before_after.png",
                title=f"{name}: before and after pruning",
                labels=("original", "pruned"),
            )
    except PruneError as err:  # matplotlib missing: the model and report still count
        logger.warning("plots skipped: %s", err)


def _push(result: PruneResult, options: PruneOptions, source) -> str:
    from prune.card import build_model_card, read_license
    from prune.hub import push_to_hub

    folder = result.out_dir
    if folder is None:
        raise ValueError("push_to_hub needs the model saved first: set out")
    license_id = read_license(source.location) or (read_license(source.hub_id) if source.hub_id else None)
    card = build_model_card(
        result.report,
        base_model=source.hub_id,
        license=license_id,
        command=result.report.get("command") or "",
        repo_id=options.push_to_hub,
    )
    return push_to_hub(
        folder, options.push_to_hub, private=options.private, revision=options.revision, card=card
    )
