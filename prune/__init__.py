"""prune-llm: layer pruning for pretrained transformers.

The few names a user needs are exported here and imported lazily, so that importing `prune` (and the
CLI's `--help`) stays instant. Everything else is reachable by module path.

Example:
    >>> import prune
    >>> result = prune.run_pruning(prune.PruneOptions(model="minilm-l6", target="4-layers"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PruneOptions": "prune.options",
    "collect_stats": "prune.collect",
    "get_anatomy": "prune.anatomy",
    "load_model": "prune.loading",
    "plan_pruning": "prune.plan",
    "remove_blocks": "prune.surgery",
    "repair_cut": "prune.repair",
    "run_pruning": "prune.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prune' has no attribute {name!r}")
