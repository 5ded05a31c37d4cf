"""Streaming collection of per-layer statistics with forward hooks.

Example:
    >>> from prune.collect import collect_stats
    >>> stats = collect_stats(model, batches, metrics=["bi", "angular", "cka"])  # doctest: +SKIP
    >>> scores = stats.scores()  # doctest: +SKIP
"""

from __future__ import annotations

from prune.collect.collector import collect_stats
from prune.collect.stats import CollectError, LayerStats

__all__ = ["CollectError", "LayerStats", "collect_stats"]
