"""How big a live model is, counted one way everywhere: parameters, bytes in memory, checkpoint bytes.

The report (``params_before``/``size_bytes_before``), the evaluation (``parameters``/``size_mb``) and the
collector's resume fingerprints all count through these functions. `prune.budget.cost` predicts the
same numbers for configurations not built yet, from the structure of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["parameter_bytes", "parameter_count", "size_metrics", "state_dict_bytes"]


def parameter_count(model: nn.Module) -> int:
    """Number of parameter elements, each shared (tied) tensor counted once.

    Example:
        >>> parameter_count(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


def parameter_bytes(model: nn.Module) -> int:
    """Bytes held by the distinct parameters and buffers: the size of the weights in memory.

    Example:
        >>> parameter_bytes(torch.nn.Linear(3, 2))
        32
    """
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of the unique tensors in the state dict (the payload of a safetensors checkpoint).

    Tensors sharing storage (tied embeddings) are counted once.

    Example:
        >>> state_dict_bytes(torch.nn.Linear(3, 2))
        32
    """
    seen: set[tuple[Any, int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def size_metrics(model: torch.nn.Module) -> dict[str, float]:
    """``parameters`` and ``size_mb`` (state-dict bytes / 2**20) of a model.

    Example:
        >>> size_metrics(torch.nn.Linear(3, 2))["parameters"]
        8
    """
    return {"parameters": parameter_count(model), "size_mb": state_dict_bytes(model) / 2**20}
