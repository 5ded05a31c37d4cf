"""``none``: the plain cut, no map fitted (the baseline every repair is measured against)."""

from __future__ import annotations

from dataclasses import dataclass

from prune.repair.base import RepairMethod, register


@dataclass(frozen=True)
class NoRepair(RepairMethod):
    """Leave the cut as it is; `prune.repair.repair_cut` returns an empty report for it."""


NONE = register(NoRepair("none", "no repair: the plain cut"))
