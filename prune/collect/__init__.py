"""Streaming collection of per-layer statistics with forward hooks.

Example:
    >>> from prune.collect import collect_stats
    >>> stats = collect_stats(model, batches, metrics=["bi", "angular", "cka"])  # doctest: +SKIP
    >>> scores = stats.scores()  # doctest: +SKIP
"""

from __future__ import annotations

from prune.collect.capture import CaptureSite, SiteStats, SiteSum, collect_site_sums
from prune.collect.collector import collect_stats
from prune.collect.stats import CollectError, LayerStats

__all__ = [
    "CaptureSite",
    "CollectError",
    "LayerStats",
    "SiteStats",
    "SiteSum",
    "collect_site_sums",
    "collect_stats",
]
