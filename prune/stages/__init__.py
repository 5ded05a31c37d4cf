"""The stages of a pruning run, each a function of one `RunContext`, each usable alone.

``run_pruning`` (`prune.pipeline`) is their composition::

    check -> load -> calibrate -> collect -> plan -> cut -> repair -> squeeze -> evaluate -> report
          -> save -> export_gguf -> push

A stage reads its own option group (`prune.options`) and the products of the stages before it, and
writes its product into the context. ``prune-llm analyze`` runs load/calibrate/collect, and
``benchmarks/strategies.py`` runs collect once and then plan/cut/evaluate per strategy.

Example:
    >>> from prune.options import PruneOptions
    >>> from prune import stages
    >>> ctx = stages.RunContext(PruneOptions(model="minilm-l6", target="4-layers", eval="none"))
    >>> for stage in (stages.check, stages.load, stages.calibrate, stages.collect, stages.plan):  # doctest: +SKIP
    ...     ctx = stage(ctx)
    >>> ctx.plan.drop  # doctest: +SKIP
    (1, 2)
"""

from __future__ import annotations

from prune.budget.stage import budget
from prune.stages.context import RunContext
from prune.stages.depth import collect, cut, plan
from prune.stages.evaluate import evaluate, report
from prune.stages.prepare import calibrate, check, load
from prune.stages.publish import export_gguf, push, save
from prune.stages.refine import repair, squeeze

# The run, in order (`prune.pipeline.run_pruning` saves, exports and pushes only where asked).
RUN_STAGES = (check, load, calibrate, collect, plan, cut, repair, squeeze, evaluate, report)
# With a budget, one stage (`prune.budget.stage.budget`) chooses and builds depth and width together.
BUDGET_STAGES = (check, load, calibrate, budget, evaluate, report)

__all__ = [
    "BUDGET_STAGES",
    "RUN_STAGES",
    "RunContext",
    "budget",
    "calibrate",
    "check",
    "collect",
    "cut",
    "evaluate",
    "export_gguf",
    "load",
    "plan",
    "push",
    "repair",
    "report",
    "save",
    "squeeze",
]
