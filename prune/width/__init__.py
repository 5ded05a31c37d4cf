"""Width pruning of the FFNs (squeezing correlated neurons, Ozen & Orailoglu 2020) and its baselines.

Names are loaded on first use, so that `prune.width.budget` (which the options validate with) stays
light to import.

Example:
    >>> from prune.width import squeeze_model
    >>> result = squeeze_model(model, batches, keep=0.75, method="squeeze")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_METHOD": "prune.width.methods",
    "FFN_METHODS": "prune.width.methods",
    "FfnMethod": "prune.width.methods",
    "KeepBudget": "prune.width.budget",
    "parse_ffn_keep": "prune.width.budget",
    "SqueezeReport": "prune.width.squeeze",
    "SqueezeResult": "prune.width.squeeze",
    "squeeze_model": "prune.width.squeeze",
    "collect_ffn_stats": "prune.width.stats",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prune.width' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
