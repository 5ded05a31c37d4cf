"""What a model's forward takes: one keyword check shared by the collector and the evaluation harness."""

from __future__ import annotations

import contextlib
import inspect

from torch import nn


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether `model.forward` has a parameter called `name` (False when its signature cannot be read).

    Example:
        >>> forward_accepts(nn.Linear(2, 2), "input")
        True
    """
    with contextlib.suppress(TypeError, ValueError):
        return name in inspect.signature(model.forward).parameters
    return False
