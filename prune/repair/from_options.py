"""`repair_cut` called with a run's options: the one mapping from `prune.options` to its arguments.

The run's repair stage (`prune.stages.refine.repair`), the budget search's candidates
(`prune.budget.build`) and the benchmarks repair a cut the way a run does; they call `repair_from_options`
so that a new repair option is passed on in one place.

Example:
    >>> from prune.options import PruneOptions
    >>> options = PruneOptions(model="m", target="drop-2", repair="none")
    >>> repair_from_options(None, None, [3, 4], [], options, anatomy=None).method
    'none'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from prune.repair.base import RepairReport

logger = logging.getLogger(__name__)


def refit_after_cut(refit: str, anatomy: Any) -> bool:
    """Whether the cut's repair is followed by the error-correcting refit (`RepairOptions.refit`).

    ``auto`` refits pre-norm decoders only: there the block output is the residual stream, the fit is
    exact and it measured better (benchmarks/README.md); post-norm encoders measured mixed.

    Example:
        >>> refit_after_cut("on", anatomy=None), refit_after_cut("off", anatomy=None)
        (True, False)
    """
    if refit == "auto":
        return getattr(getattr(anatomy, "mlp", None), "residual", None) == "pre_norm"
    return refit == "on"


def repair_from_options(
    original: nn.Module,
    pruned: nn.Module,
    drop: Iterable[int],
    batches: Sequence[Any],
    options: Any,
    *,
    anatomy: Any,
    progress: bool = False,
    refit: bool | None = None,
) -> RepairReport:
    """Repair the cut `pruned` of `original` as a run with `options` does (`prune.repair.repair_cut`).

    The options give the method (``repair``), ``repair_order``, ``repair_objective``, the token limits
    (``max_tokens``, ``skip_tokens``) and the refit (``refit``, ``refit_blocks``: 0 for every block after
    the junction, ``refit_attention``). A `RepairError` (e.g. a model whose MLP placement is unknown) is
    raised when the run asked for its repair method by name; under the default method it becomes the
    plain cut, with the error as the report's warning.

    Args:
        original: the model before the cut (only read).
        pruned: the cut model, repaired in place.
        drop: the removed blocks (original indices).
        batches: calibration batches to fit on.
        options: the run's `PruneOptions` (or anything with those fields).
        anatomy: the original's anatomy.
        progress: show progress bars.
        refit: override the refit: None follows ``options.refit`` (`refit_after_cut`); False repairs
            without it (the budget search's candidates).

    Returns:
        The `RepairReport`.

    Example:
        >>> report = repair_from_options(model, pruned, plan.drop, batches, options, anatomy=anatomy)  # doctest: +SKIP
        >>> report.method, report.method_requested  # doctest: +SKIP
        ('linear', 'linear')
    """
    # looked up on the package when called, so that a replaced `prune.repair.repair_cut` is the one used
    from prune.repair import RepairError, RepairReport, repair_cut

    if refit is None:
        refit = refit_after_cut(options.refit, anatomy)
    try:
        return repair_cut(
            original,
            pruned,
            drop,
            batches,
            method=options.repair,
            anatomy=anatomy,
            order=options.repair_order,
            objective=options.repair_objective,
            max_tokens=options.max_tokens,
            skip_tokens=options.skip_tokens,
            progress=progress,
            refit=refit,
            refit_blocks=options.refit_blocks or None,  # 0: every block after the junction
            refit_attention=options.refit_attention,
        )
    except RepairError as err:
        if "repair" in options.model_fields_set:
            raise
        logger.warning("not repaired: %s", err)
        return RepairReport(
            "none",
            options.repair_order,
            options.repair_objective,
            warnings=[str(err)],
            method_requested=options.repair,
        )


__all__ = ["refit_after_cut", "repair_from_options"]
