"""`search_budget`: the frontier of a budget without saving anything (`prune-llm search`)."""

from __future__ import annotations

from typing import Any

from prune.options import PruneOptions


def search_budget(options: PruneOptions, *, model: Any = None, tokenizer: Any = None, progress: bool = True):
    """Search the depth x width configuration that meets ``options.budget``; nothing is saved.

    The same search as ``run_pruning(PruneOptions(..., budget=...))``: the depth statistics and the fits on
    the first three quarters of the calibration data, the scores on the last quarter.

    Args:
        options: Run options with ``budget`` set (``target`` and ``ffn_keep`` unset).
        model: A model you already hold (never modified); loaded from ``options.model`` otherwise.
        tokenizer: Its tokenizer (needed with `model`).
        progress: Show progress bars.

    Returns:
        The `prune.budget.search.SearchResult` (``chosen``, ``explored``, ``reason``, ``to_dict``).

    Raises:
        BudgetError: no budget given, or one no configuration meets (the closest feasible is named).

    Example:
        >>> from prune import PruneOptions
        >>> from prune.budget import search_budget
        >>> result = search_budget(PruneOptions(model="smollm2-135m", budget="params:100M"))  # doctest: +SKIP
        >>> result.chosen.candidate.params <= 100_000_000  # doctest: +SKIP
        True
    """
    from prune import stages
    from prune.budget.stage import budget
    from prune.errors import BudgetError

    if options.budget is None:
        raise BudgetError("search needs a budget: pass --budget, e.g. params:100M")
    ctx = stages.RunContext(
        options.model_copy(update={"eval": "none"}), model=model, tokenizer=tokenizer, progress=progress
    )
    for stage in (stages.check, stages.load, stages.calibrate):
        ctx = stage(ctx)
    return budget(ctx, build=False).budget


__all__ = ["search_budget"]
