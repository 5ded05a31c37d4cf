"""Pruning to a budget: parameters, size, latency or loss; depth and width chosen together.

Example:
    >>> from prune.budget import parse_budget
    >>> parse_budget("params:100M").kind
    'params'
"""

from __future__ import annotations

from prune.budget.api import search_budget
from prune.budget.cost import ModelCosts
from prune.budget.spec import Budget, parse_budget

__all__ = ["Budget", "ModelCosts", "parse_budget", "search_budget"]
