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
    from prune.anatomy import get_anatomy
    from prune.budget.build import split_calibration
    from prune.budget.run import run_budget_search
    from prune.collect import collect_stats
    from prune.data import load_texts, make_batches
    from prune.errors import BudgetError
    from prune.loading import load_model
    from prune.pipeline import REPORT_METRICS, _strategy_needs_search
    from prune.plan import required_metrics

    if options.budget is None:
        raise BudgetError("search needs a budget: pass --budget, e.g. params:100M")
    if model is None:
        loaded = load_model(
            options.model,
            device=options.device,
            dtype=options.dtype,
            trust_remote_code=options.trust_remote_code,
            progress=progress,
        )
        model, tokenizer, kind = loaded.model, loaded.require_tokenizer(), loaded.kind
    else:
        from prune.loading import model_kind

        kind = model_kind(model)
    anatomy = get_anatomy(model, options.block_path)
    batches = make_batches(
        tokenizer,
        load_texts(options.calib, purpose="calib", text_column=options.text_column, seed=options.seed),
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.calib_samples,
        packed=kind == "causal-lm",
    )
    fit, _ = split_calibration(batches)
    metrics = tuple(dict.fromkeys([*required_metrics(options.strategy, options.metric), *REPORT_METRICS]))
    scores = collect_stats(
        model,
        fit,
        anatomy=anatomy,
        metrics=metrics,
        max_tokens=options.max_tokens,
        skip_tokens=options.skip_tokens,
        seed=options.seed,
        progress=progress,
    ).scores()
    search = None
    if _strategy_needs_search(options.strategy):
        from prune.plan.search import SearchContext

        search = SearchContext(model=model, batches=fit, kind=kind, anatomy=anatomy)
    result, _ = run_budget_search(
        options, model, anatomy, kind, batches, scores, search_context=search, progress=progress
    )
    return result


__all__ = ["search_budget"]
