"""Where a model keeps its blocks: family data files, generic discovery, user-named block lists.

Example:
    >>> from prune.anatomy import get_anatomy
    >>> anatomy = get_anatomy(model)  # doctest: +SKIP
    >>> anatomy.block_path, anatomy.num_blocks  # doctest: +SKIP
    ('model.layers', 30)
"""

from __future__ import annotations

from prune.anatomy.discovery import get_anatomy, scan_layer_index_attributes
from prune.anatomy.spec import Anatomy, FamilySpec, load_families

__all__ = ["Anatomy", "FamilySpec", "get_anatomy", "load_families", "scan_layer_index_attributes"]
