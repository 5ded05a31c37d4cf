"""Planning: which blocks to remove for a target, and why.

`plan_pruning` turns the collector's scores and a target ("8-layers", "drop-4", "25%") into a `Plan`
with a strategy from `STRATEGIES` (span, span-repair, topk, cka, iterative, last, random); `required_metrics`
says which scores a strategy needs collected. A run's default, ``auto``, is resolved from its repair by
`resolve_strategy` (``span-repair`` when it repairs with ``linear``, ``span`` otherwise). The ``iterative`` strategy also evaluates the model on
calibration data, given as a `SearchContext`.

Example:
    >>> from prune.plan import parse_target, required_metrics
    >>> parse_target("8-layers", 12), required_metrics("span")
    (4, ('angular',))
"""

from __future__ import annotations

from prune.errors import PlanError

# Each strategy registers itself when its module is imported.
from prune.plan import repaired_span as _repaired_span
from prune.plan import search as _search
from prune.plan import strategies as _strategies
from prune.plan.base import STRATEGIES, Plan, Selection, SelectRequest, Strategy
from prune.plan.planner import AUTO, get_strategy, plan_pruning, required_metrics, resolve_strategy
from prune.plan.search_context import SearchContext
from prune.plan.targets import check_target_form, parse_target

del _repaired_span, _search, _strategies

__all__ = [
    "AUTO",
    "STRATEGIES",
    "Plan",
    "PlanError",
    "SearchContext",
    "SelectRequest",
    "Selection",
    "Strategy",
    "check_target_form",
    "get_strategy",
    "parse_target",
    "plan_pruning",
    "required_metrics",
    "resolve_strategy",
]
