"""The repair stage: fit a map for every cut span on calibration data and fold it into the pruned model.

`repair_cut` is what the pipeline calls after `prune.surgery.remove_blocks`; it can be called alone on
any original/pruned pair. `fit_spans` fits many candidate spans of one model in one calibration pass
(the repair-aware span choice uses it to compare spans by their repaired error, in closed form).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from prune.collect.capture import CaptureSite, SiteSum, collect_site_sums
from prune.repair.base import (
    RIDGE_GRID,
    Fit,
    RepairError,
    RepairMethod,
    RepairReport,
    SpanRepair,
    contiguous_spans,
    get_repair,
)

logger = logging.getLogger(__name__)

Order = Literal["sequential", "one-pass"]
Objective = Literal["mse", "relative"]


@dataclass(frozen=True)
class SpanTask:
    """One span to fit, in the indexing of the model it is fitted on."""

    key: str
    kept: int | None
    end: int


def _site_name(site: CaptureSite) -> str:
    return f"{site.block}:{site.module}:{site.io}"


def fit_spans(
    model: nn.Module,
    anatomy: Any,
    batches: Sequence[Any],
    tasks: Sequence[SpanTask],
    method: RepairMethod,
    *,
    objective: Objective = "mse",
    ridge: float | None = None,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Fit], int]:
    """Fit `method` for every task from one calibration pass over `model` (which is only read).

    With ``ridge=None`` and at least two batches, the batches are split in two halves (even and odd),
    the ridge of each span is chosen from `RIDGE_GRID` by the error of a fit on one half measured on the
    other (both ways), and the final fit uses all tokens. The pass costs the same as one over all batches.

    Returns:
        The fit of each task by key, and the number of calibration tokens.
    """
    mlp = method.check(anatomy.mlp)
    blocks = anatomy.blocks(model)
    sites: dict[str, CaptureSite] = {}
    sums: list[SiteSum] = []
    intercepts: dict[str, bool] = {}
    for task in tasks:
        local = method.sites(mlp, task.kept, task.end)
        names = {name: _site_name(site) for name, site in local.items()}
        sites.update({names[name]: site for name, site in local.items()})
        for entry in method.sums(mlp, objective == "relative"):
            sums.append(
                SiteSum(f"{task.key}/{entry.name}", tuple(names[s] for s in entry.sites), entry.update)
            )
        intercepts[task.key] = task.kept is not None and method.has_intercept(blocks[task.kept], mlp)

    choose = ridge is None and len(batches) >= 2 and method.least_squares
    halves = [list(batches[0::2]), list(batches[1::2])] if choose else [list(batches)]
    budgets = [None if max_tokens is None else max(1, max_tokens // len(halves))] * len(halves)
    stats = [
        collect_site_sums(
            model,
            half,
            sites,
            sums,
            anatomy=anatomy,
            max_tokens=budget,
            skip_tokens=skip_tokens,
            progress=progress,
            desc="collecting repair statistics",
        )
        for half, budget in zip(halves, budgets, strict=True)
    ]
    totals = {name: sum(s.sums[name] for s in stats) for name in stats[0].sums}
    num_tokens = sum(s.num_tokens for s in stats)

    fits: dict[str, Fit] = {}
    for task in tasks:

        def of(source: dict[str, Tensor], key: str = task.key) -> dict[str, Tensor]:
            return {
                name.split("/", 1)[1]: value for name, value in source.items() if name.startswith(key + "/")
            }

        kw = {"intercept": intercepts[task.key]}
        chosen = ridge
        if choose:
            a, b = of(stats[0].sums), of(stats[1].sums)

            def heldout(r: float, a: dict = a, b: dict = b, kw: dict = kw) -> float:
                return method.error(method.fit(a, mlp, r, **kw), b, mlp) + method.error(
                    method.fit(b, mlp, r, **kw), a, mlp
                )

            chosen = min(RIDGE_GRID, key=heldout)
        fit = method.fit(of(totals), mlp, chosen, **kw)
        if method.least_squares and fit.residual_after > fit.residual_before:
            # cannot happen for an exact solve (the plain cut is a candidate); guards a failed solve
            logger.warning(
                "repair of span %s would raise the calibration error; left as the plain cut", task.key
            )
            before = fit.residual_before
            fit = method.identity(mlp, int(fit.tensors["delta"].shape[0]))
            fit.residual_before = fit.residual_after = before
        fits[task.key] = fit
    return fits, num_tokens


def repair_cut(
    original: nn.Module,
    pruned: nn.Module,
    drop: Iterable[int],
    batches: Sequence[Any],
    *,
    method: str = "linear",
    anatomy: Any = None,
    order: Order = "sequential",
    objective: Objective = "mse",
    ridge: float | None = None,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    progress: bool = True,
    refit: bool = False,
    refit_blocks: int | None = None,
    refit_weighting: str = "mse",
    refit_attention: bool = False,
) -> RepairReport:
    """Fit a map for each contiguous cut span and fold it into `pruned` (in place; `original` is only read).

    Args:
        original: the model before the cut.
        pruned: ``remove_blocks(original, drop)`` (a weight-sharing copy is fine: folds replace parameters,
            they never write into shared tensors).
        drop: the removed blocks (original indices).
        batches: calibration batches (as for `prune.collect.collect_stats`).
        method: a name in `prune.repair.REPAIRS`: ``linear``, ``scale`` or ``none``.
        anatomy: the original's anatomy (found if None).
        order: ``sequential``: span k is fitted on the original with spans 1..k-1 already cut and
            repaired, so each map corrects what really reaches it (one calibration pass per span);
            ``one-pass``: every span is fitted on the original model in a single pass.
        objective: ``mse``: least squares on the hidden states (ReplaceMe); ``relative``: each token's
            error divided by ``||h_e||^2`` (the next pre-norm block sees the direction, not the size, and
            a few massive-activation tokens no longer dominate the fit).
        ridge: relative ridge; None chooses it per span on held-out calibration tokens.
        max_tokens: calibration token budget per pass.
        skip_tokens: leave each sequence's first N tokens out of the statistics.
        progress: show progress bars.
        refit: after the maps, refit the down projections of the kept blocks from the first junction on
            so that the pruned model's stream tracks the original's (`prune.repair.refit.refit_model`;
            the kept block before a span is refitted from its d_ff-wide features).
        refit_blocks: refit only this many blocks from the first junction on (None: all of them).
        refit_weighting: the refit's objective, ``mse`` or ``token`` (see `refit_model`).
        refit_attention: the refit also refits each block's attention output projection first
            (pre-norm blocks; `refit_model`'s ``attention``).

    Returns:
        The `RepairReport`: per span, the map, where it went, the relative error before and after.

    Raises:
        RepairError: unknown method or order, or a model whose MLP placement is unknown.

    Example:
        >>> pruned = remove_blocks(model, [3, 4])  # doctest: +SKIP
        >>> report = repair_cut(model, pruned, [3, 4], batches, method="linear")  # doctest: +SKIP
        >>> report.spans[0].residual_after < report.spans[0].residual_before  # doctest: +SKIP
        True
    """
    from prune.anatomy import get_anatomy
    from prune.surgery import remove_blocks

    chosen = get_repair(method)
    if order not in ("sequential", "one-pass"):
        raise RepairError(f"unknown repair order {order!r}; choose sequential or one-pass")
    if objective not in ("mse", "relative"):
        raise RepairError(f"unknown repair objective {objective!r}; choose mse or relative")
    report = RepairReport(chosen.name, order, objective)
    drop = sorted(set(int(i) for i in drop))
    if chosen.name == "none" or not drop:
        return report
    started = time.perf_counter()
    anatomy = anatomy if anatomy is not None else get_anatomy(original)
    mlp = chosen.check(anatomy.mlp)
    keep = [i for i in range(anatomy.num_blocks) if i not in set(drop)]
    pruned_anatomy = get_anatomy(pruned, anatomy.block_path)
    pruned_blocks = pruned_anatomy.blocks(pruned)
    if len(pruned_blocks) != len(keep):
        raise RepairError(
            f"the pruned model has {len(pruned_blocks)} blocks, but cutting {drop} from {anatomy.num_blocks} "
            f"leaves {len(keep)}; pass the drop list the pruned model was made with"
        )

    spans: list[tuple[int, int]] = []
    for first, last in contiguous_spans(drop):
        if first == 0 and chosen.needs_kept(mlp):
            blocker = "only linear folds into the embeddings"
            if chosen.name == "linear":
                from prune.repair.linear import embedding_fold_blocker

                blocker = embedding_fold_blocker(pruned, pruned_anatomy, mlp, batches[0])
                if blocker is None:  # the map goes into the untied input embeddings
                    spans.append((first, last))
                    continue
            # scale repairs a cut at 0 everywhere but in post-norm encoders (no norm before block 0).
            scale_can = mlp.residual != "post_norm" and chosen.name != "scale"
            fix = "use --repair scale, which can, or keep block 0" if scale_can else "keep block 0"
            message = (
                f"blocks {first}-{last} were cut with no kept block before them, so {chosen.name!r} has nowhere "
                f"to fold a map ({blocker}); that span is a plain cut. To repair it, {fix}."
            )
            logger.warning(message)
            report.warnings.append(message)
            report.spans.append(
                SpanRepair(first, last, None, chosen.name, "none", None, None, None, 0, 0.0, skipped=message)
            )
            continue
        spans.append((first, last))

    def fold(model: nn.Module, blocks: nn.ModuleList, kept: int | None, after: range, fit: Fit) -> str:
        if kept is None and chosen.name == "linear":
            from prune.repair.linear import fold_into_embeddings

            return fold_into_embeddings(model, fit)
        return chosen.fold(blocks, kept, after, fit, mlp)

    def after_in_pruned(last: int) -> range:
        later = [position for position, block in enumerate(keep) if block > last]
        return range(later[0], len(keep)) if later else range(0)

    def record(first: int, last: int, fit: Fit, where: str, tokens: int, seconds: float) -> None:
        report.spans.append(
            SpanRepair(
                first,
                last,
                first - 1 if first > 0 else None,
                chosen.name,
                f"{chosen.describe(mlp)}: {where}",
                float(f"{fit.residual_before:.6g}"),
                float(f"{fit.residual_after:.6g}"),
                fit.ridge,
                tokens,
                round(seconds, 3),
            )
        )

    options = dict(
        objective=objective, ridge=ridge, max_tokens=max_tokens, skip_tokens=skip_tokens, progress=progress
    )
    if not spans:
        pass  # every span starts at block 0 (recorded above as a plain cut): nothing to fit
    elif order == "one-pass":
        tasks = [SpanTask(f"{a}-{b}", a - 1 if a > 0 else None, b) for a, b in spans]
        fits, tokens = fit_spans(original, anatomy, batches, tasks, chosen, **options)
        share = (time.perf_counter() - started) / max(1, len(spans))
        for (first, last), task in zip(spans, tasks, strict=True):
            kept = keep.index(first - 1) if first > 0 else None
            where = fold(pruned, pruned_blocks, kept, after_in_pruned(last), fits[task.key])
            record(first, last, fits[task.key], where, tokens, share)
    else:
        current = remove_blocks(original, [], anatomy=anatomy, share_weights=True)
        current_anatomy, present = anatomy, list(range(anatomy.num_blocks))
        for first, last in spans:
            span_started = time.perf_counter()
            kept = present.index(first - 1) if first > 0 else None
            end = present.index(last)
            task = SpanTask(f"{first}-{last}", kept, end)
            fits, tokens = fit_spans(current, current_anatomy, batches, [task], chosen, **options)
            fit = fits[task.key]
            if (first, last) != spans[-1]:  # the last span's model is not needed
                current_blocks = current_anatomy.blocks(current)
                fold(current, current_blocks, kept, range(end + 1, len(present)), fit)
                cut = range(present.index(first), end + 1)
                current = remove_blocks(current, cut, anatomy=current_anatomy, share_weights=True)
                present = [b for b in present if not first <= b <= last]
                current_anatomy = get_anatomy(current, anatomy.block_path)
            pruned_kept = keep.index(first - 1) if first > 0 else None
            where = fold(pruned, pruned_blocks, pruned_kept, after_in_pruned(last), fit)
            record(first, last, fit, where, tokens, time.perf_counter() - span_started)
    report.spans.sort(key=lambda span: span.first)
    if refit:
        from prune.repair.refit import cut_correspondence, refit_model

        correspondence = cut_correspondence(anatomy.num_blocks, drop)
        first = next((k for k, c in enumerate(correspondence) if c != k), len(correspondence))
        last = len(correspondence) if refit_blocks is None else min(len(correspondence), first + refit_blocks)
        report.refit = refit_model(
            original,
            pruned,
            batches,
            correspondence=correspondence,
            blocks=range(first, last),
            anatomy=anatomy,
            max_tokens=max_tokens,
            skip_tokens=skip_tokens,
            weighting=refit_weighting,  # type: ignore[arg-type]
            attention=refit_attention,
            progress=progress,
        ).to_dict()
    report.seconds = time.perf_counter() - started
    if not report.applied:  # every span was skipped and nothing was refitted: the model is the plain cut
        report.keep_plain_cut()
    return report


__all__ = ["Objective", "Order", "SpanTask", "fit_spans", "repair_cut"]
