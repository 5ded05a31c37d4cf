"""The whole pruning run in one call: `run_pruning`, the composition of the stages of `prune.stages`.

The CLI (`prune-llm MODEL --target ...`, `prune-llm run RECIPE`) is a thin layer over `run_pruning`;
Python users call it the same way, run the stages themselves on a `prune.stages.RunContext`, or call
the library steps (`prune.get_anatomy`, `prune.collect_stats`, `prune.plan_pruning`,
`prune.remove_blocks`) on any model, custom ones included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune.options import PruneOptions
from prune.vocab import SCORE_METRICS

# Scores every report carries (kept importable under this name).
REPORT_METRICS = SCORE_METRICS


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
        context: the run's `prune.stages.RunContext` (every stage's product).
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
    context: Any = field(default=None, repr=False)


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
        command: the command line to record in the report and model card (default: the equivalent
            ``prune-llm`` command line, so a run started from Python can be made again).
        progress: show progress bars.

    Returns:
        A `PruneResult` with the pruned model, the plan, the scores and the report.

    Example:
        >>> from prune import PruneOptions, run_pruning
        >>> result = run_pruning(PruneOptions(model="minilm-l6", target="4-layers", out="pruned"))  # doctest: +SKIP
        >>> result.plan.drop  # doctest: +SKIP
        (1, 2)
    """
    from prune import stages
    from prune.stages.publish import command_for

    ctx = stages.RunContext(
        options,
        model=model,
        tokenizer=tokenizer,
        command=command or command_for(options),
        progress=progress,
    )
    for stage in stages.BUDGET_STAGES if options.budget is not None else stages.RUN_STAGES:
        ctx = stage(ctx)
    if ctx.checked.out:
        ctx = stages.export_gguf(stages.save(ctx))
    return _result(stages.push(ctx))


def _result(ctx) -> PruneResult:
    return PruneResult(
        model=ctx.pruned,
        tokenizer=ctx.tokenizer,
        plan=ctx.plan,
        scores=ctx.scores,
        report=ctx.report,
        out_dir=ctx.out_dir,
        hub_url=ctx.hub_url,
        comparison=ctx.comparison,
        gguf=ctx.gguf,
        context=ctx,
    )


def save_pruned(result: PruneResult, out: str | Path, *, force: bool = False) -> Path:
    """Save a pruned model, its tokenizer, report, recipe and model card into `out`, atomically.

    The folder appears complete or not at all; an existing folder is replaced only with `force`.

    Args:
        result: what `run_pruning` returned.
        out: the folder to write.
        force: replace `out` if it exists.
    """
    from prune import stages

    ctx = result.context
    if ctx is None:
        raise ValueError("save_pruned needs the PruneResult that run_pruning returned (it carries the run)")
    ctx.options = ctx.options.model_copy(update={"force": force})
    ctx.report = result.report
    stages.save(ctx, out)
    result.out_dir = ctx.out_dir
    return Path(out)
