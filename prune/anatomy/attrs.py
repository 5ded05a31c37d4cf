"""Dotted attribute paths inside a model (``model.layers.0.self_attn``), shared by the anatomy modules."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["resolve_attr"]


def resolve_attr(root: Any, dotted: str) -> Any:
    """``root.a.b.c`` for ``dotted == "a.b.c"``; ``root`` itself for ``""``. Raises AttributeError."""
    obj = root
    for part in filter(None, dotted.split(".")):
        obj = (
            obj[int(part)]
            if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential))
            else getattr(obj, part)
        )
    return obj
