"""Width pruning of every FFN: keep a set of intermediate neurons per block, fold the rest away.

`squeeze_model` is the stage: statistics (one calibration pass per group of blocks, on the model as it
is then), a selection and a compensation per block (`prune.width.methods`), the folds, and the config's
intermediate size. Stock configs hold one ``intermediate_size``, so every block keeps the same number of
neurons.

Example:
    >>> from prune.width import squeeze_model
    >>> result = squeeze_model(model, batches, keep=0.75)  # doctest: +SKIP
    >>> result.report.kept, result.model.config.intermediate_size  # doctest: +SKIP
    (1152, 1152)
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from prune.errors import AnatomyError
from prune.width.budget import parse_ffn_keep

logger = logging.getLogger(__name__)

ENERGY_LEVELS = (0.9, 0.99, 0.999)
DEFAULT_RIDGE = 1e-3


@dataclass
class BlockSqueeze:
    """What was done to one block: neurons kept and the relative output error on calibration data."""

    block: int
    kept: int
    size: int
    error: float
    error_uncompensated: float
    neurons_for_energy: dict[str, int] = field(default_factory=dict)
    ridge: float | None = None
    held_back_error: float | None = None


@dataclass
class SqueezeReport:
    """What `squeeze_model` did (JSON-able through `to_dict`)."""

    method: str
    description: str
    keep: str
    size_before: int
    kept: int
    ridge: float | str
    num_tokens: int
    passes: int
    gram_bytes_per_block: int
    blocks: list[BlockSqueeze]
    seconds: float
    refit: dict[str, Any] | None = None
    held_back_tokens: int = 0
    ridge_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SqueezeResult:
    """The squeezed model and its `SqueezeReport`."""

    model: nn.Module
    report: SqueezeReport


def squeeze_model(
    model: nn.Module,
    batches: Sequence[Any],
    *,
    keep: float | str = 0.75,
    method: str = "squeeze",
    anatomy: Any = None,
    ridge: float | str = "auto",
    block_group: int | None = None,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    accelerator: Any = None,
    inplace: bool = False,
    progress: bool = True,
    stats: dict[int, Any] | None = None,
    held_back_stats: dict[int, Any] | None = None,
    energy_levels: Sequence[float] = ENERGY_LEVELS,
    refit: bool = False,
    refit_attention: bool = False,
    reference: nn.Module | None = None,
    correspondence: Sequence[int] | None = None,
) -> SqueezeResult:
    """Squeeze the intermediate neurons of every FFN of `model` (no fine-tuning).

    Args:
        model: A transformers model (or a custom one with `anatomy`) whose family has an MLP anatomy.
        batches: Calibration batches (a sequence: it is read once per group of blocks).
        keep: Fraction of the neurons to keep (0, 1], or ``"auto:E"``: the fewest neurons with which every
            block keeps a fraction E of its activation energy (pivoted-Cholesky count, the maximum over blocks).
        method: A name of `prune.width.FFN_METHODS` (default "squeeze").
        anatomy: The model's anatomy (found with `get_anatomy` when None).
        ridge: Damping of the least-squares solves, relative to the mean neuron energy, or ``"auto"``
            (default): each block's ridge is chosen from `prune.width.ridge.RIDGE_GRID` by the output error
            on every 5th calibration batch, held back from a first fit, and the fold is then fitted on all
            the batches with it (`prune.width.ridge`; no extra forward pass). Methods without a
            least-squares fold, or a single calibration batch, use the default 1e-3.
        block_group: Blocks per calibration pass (None: as many as fit 2 GiB of float64 Grams, two per
            block with the auto ridge: `prune.width.stats.block_groups`); one group's statistics are held
            at a time. Each pass runs on the model as it is then, so later groups see the earlier ones
            squeezed. ``keep="auto:E"`` collects every group twice (the energy curves of all blocks come
            first), unless all blocks fit one group.
        max_tokens, skip_tokens: Token budget and leading tokens left out, as in `collect_stats`.
        accelerator: Optional ``accelerate.Accelerator``.
        inplace: Squeeze `model` itself; by default a deep copy is squeezed and `model` is untouched.
        progress: Show progress bars.
        stats: Statistics of every block already collected on this model (`collect_ffn_stats`, e.g. to
            compare methods on the same data); then no calibration pass runs and `batches` is not read.
        held_back_stats: With `stats` and ``ridge="auto"``: the statistics of the held-back batches
            (`stats` being those of the others); without them a given `stats` uses the default ridge.
            Where no ridge is chosen (a method without a least-squares fold, or a fixed ridge) they are
            pooled with `stats`, so the result equals that of the pooled statistics.

        energy_levels: Report per block how many neurons keep these fractions of the activation energy
            (a pivoted Cholesky per block: about a second for d_ff 1536); () skips it.
        refit: After the squeeze, refit every block's down projection (its kept neurons) so that the
            squeezed model's residual stream tracks `reference`'s (`prune.repair.refit.refit_model`:
            corrects the error that earlier blocks leave, which each block's own compensation cannot see).
        refit_attention: The refit also refits each pre-norm block's attention output projection first
            (`refit_model`'s ``attention``).
        reference: The model to track (default: `model` itself, unless `inplace`); e.g. the dense model
            before a depth cut, with `correspondence`.
        correspondence: For each block of `model`, the block of `reference` it stands for (None: same index;
            after a cut: `prune.repair.refit.cut_correspondence`).

    Returns:
        The squeezed model and the report.

    Raises:
        TargetError: a bad `keep`; AnatomyError: the family's MLP or intermediate-size key is unknown, or
            the blocks disagree on their width; KeyError: an unknown method; RepairError: ``refit`` with
            ``inplace`` and no `reference`.
    """
    from prune.anatomy import get_anatomy
    from prune.width.compensate import apply_to_block, block_problem, interpolation, output_errors
    from prune.width.methods import FFN_METHODS
    from prune.width.ridge import choose_ridge, collect_split_stats, hold_back_split
    from prune.width.selection import SELECTORS, energy_curve, neurons_needed
    from prune.width.stats import block_groups, gram_bytes

    budget = parse_ffn_keep(keep)
    if ridge != "auto" and (isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge > 0):
        from prune.errors import RepairError

        raise RepairError(
            f"ridge must be 'auto' or a positive number, got {ridge!r}; pass e.g. 1e-3, or 'auto'"
        )
    chosen = FFN_METHODS.get(method)
    selector = SELECTORS[chosen.selection]
    start = time.perf_counter()
    target = model if inplace else copy.deepcopy(model)
    anatomy = anatomy if anatomy is not None else get_anatomy(target)
    mlp = anatomy.require_mlp("width squeezing")
    blocks = anatomy.blocks(target)
    config = anatomy.layer_config(target)
    if config is not None and mlp.intermediate_size_key is None:
        raise AnatomyError(
            "the config names no intermediate size, so a squeezed model would not reload; add "
            '"intermediate_size_key" to the family file\'s "mlp" entry'
        )
    sizes = {mlp.intermediate_size(block) for block in blocks}
    if len(sizes) != 1:
        raise AnatomyError(
            f"the blocks have different FFN widths {sorted(sizes)}; one config value cannot describe a common "
            "squeezed width for them"
        )
    size = sizes.pop()
    collect = dict(max_tokens=max_tokens, skip_tokens=skip_tokens, accelerator=accelerator, progress=progress)

    count = budget.count(size)
    limit = max((*energy_levels, *((budget.energy,) if budget.energy is not None else ())), default=0.0)
    ridge_note = None
    validate = ridge == "auto" and chosen.compensation == "ls"
    if validate and stats is None and not hold_back_split(batches)[1]:
        validate, ridge_note = (
            False,
            "one calibration batch: nothing to hold back, so the ridge is the default",
        )
    if validate and stats is not None and held_back_stats is None:
        validate, ridge_note = False, "statistics given without held_back_stats, so the ridge is the default"
    fixed_ridge = DEFAULT_RIDGE if ridge == "auto" else float(ridge)
    # the held-back batches are summed apart: two Grams per block, which the default bound counts
    groups = block_groups(len(blocks), size, block_group, grams_per_block=2 if validate else 1)

    def collect_group(group: list[int]) -> dict[int, tuple[Any, Any]]:
        """(fitted-on, held-back or None) statistics of the group's blocks, one pass over the batches."""
        fit, held = collect_split_stats(target, batches, anatomy, group, hold_back=validate, **collect)
        return {b: (fit[b], held[b] if held is not None else None) for b in group}

    def pooled(pair: tuple[Any, Any]) -> Any:
        return pair[0] if pair[1] is None else pair[0] + pair[1]

    curves: dict[int, Any] = {}
    cached: dict[int, tuple[Any, Any]] = {}
    if stats is not None:
        groups = [list(range(len(blocks)))]
        # held-back statistics that choose no ridge (no least-squares fold, or a fixed ridge) are more
        # tokens like any other: pooled, so the result is that of the whole calibration set
        cached = {
            b: (stats[b], held_back_stats[b])
            if validate
            else (stats[b] + held_back_stats[b] if held_back_stats else stats[b], None)
            for b in stats
        }
    passes = 0
    if count is None and cached:
        curves = {
            b: energy_curve(block_problem(mlp.parts(blocks[b]), pooled(cached[b])).fit_moment(), limit=limit)
            for b in cached
        }
        count = max(neurons_needed(curves[b], budget.energy, size) for b in curves)
    if count is None:
        # every block keeps the same count, so all curves are needed before the first fold; the
        # statistics of the last group are kept for the folds, the others are collected again
        for group in groups:
            group_stats = collect_group(group)
            passes += 1
            for b in group:
                curves[b] = energy_curve(
                    block_problem(mlp.parts(blocks[b]), pooled(group_stats[b])).fit_moment(), limit=limit
                )
            cached = group_stats if len(groups) == 1 else {}
            # freed before the next group is collected: one group's statistics at a time
            del group_stats
        count = max(neurons_needed(curves[b], budget.energy, size) for b in curves)

    def fold(b: int, pair: tuple[Any, Any]) -> BlockSqueeze:
        """Select, compensate and fold block `b`; its pooled sums and moments are freed on return."""
        parts = mlp.parts(blocks[b])
        fit_stats, held_stats = pair
        choice = None
        if validate:
            # the ridge is measured on the held-back batches; the fold then uses all of them
            choice = choose_ridge(
                block_problem(parts, fit_stats),
                block_problem(parts, held_stats),
                count,
                selector,
                chosen.compensation,
                selection_ridge=fixed_ridge,
            )
        block_ridge = choice.ridge if choice is not None else fixed_ridge
        problem = block_problem(parts, pooled(pair))
        if b not in curves and energy_levels:
            curves[b] = energy_curve(problem.fit_moment(), limit=limit)
        kept = selector(problem, count, fixed_ridge)
        transform, offset = interpolation(problem, kept, chosen.compensation, block_ridge)
        error, uncompensated = output_errors(problem, kept, transform, offset)
        apply_to_block(parts, kept, transform, offset)
        logger.info(
            "block %d: kept %d of %d neurons, output error %.4f (ridge %g)",
            b,
            count,
            size,
            error,
            block_ridge,
        )
        return BlockSqueeze(
            block=b,
            kept=int(kept.numel()),
            size=size,
            error=error,
            error_uncompensated=uncompensated,
            neurons_for_energy={f"{e:g}": neurons_needed(curves[b], e, size) for e in energy_levels},
            ridge=block_ridge,
            held_back_error=choice.held_back_error if choice is not None else None,
        )

    results: list[BlockSqueeze] = []
    num_tokens = held_tokens = 0
    for group in groups:
        group_stats = cached if all(b in cached for b in group) else None
        if group_stats is None:
            group_stats = collect_group(group)
            passes += 1
        results += [fold(b, group_stats[b]) for b in group]
        fit_stats, held_stats = group_stats[group[-1]]
        held_tokens = held_stats.num_tokens if held_stats is not None else 0
        num_tokens = fit_stats.num_tokens + held_tokens
        # freed before the next group is collected: one group's statistics at a time
        del group_stats, fit_stats, held_stats
        cached = {}
    if config is not None:
        setattr(config, mlp.intermediate_size_key, count)
    refit_report = None
    if refit:
        from prune.repair.refit import refit_model

        source = reference if reference is not None else (None if inplace else model)
        if source is None:
            from prune.errors import RepairError

            raise RepairError(
                "squeeze_model(refit=True, inplace=True) has no model left to track: the dense model is the "
                "one being squeezed; pass reference= (the model before the squeeze, e.g. a copy) or inplace=False"
            )
        refit_report = refit_model(
            source,
            target,
            batches,
            correspondence=correspondence,
            blocks=range(len(blocks)),
            anatomy=get_anatomy(source, anatomy.block_path),
            max_tokens=max_tokens,
            skip_tokens=skip_tokens,
            attention=refit_attention,
            progress=progress,
        ).to_dict()
    report = SqueezeReport(
        method=chosen.name,
        description=chosen.description,
        keep=budget.describe(),
        size_before=size,
        kept=count,
        ridge=ridge if ridge == "auto" else float(ridge),
        num_tokens=num_tokens,
        held_back_tokens=held_tokens,
        ridge_note=ridge_note,
        passes=passes,
        gram_bytes_per_block=gram_bytes(size),
        blocks=results,
        seconds=time.perf_counter() - start,
        refit=refit_report,
    )
    return SqueezeResult(model=target, report=report)


__all__ = ["BlockSqueeze", "SqueezeReport", "SqueezeResult", "squeeze_model"]
