"""Training-free repair of a cut: fit a map on calibration activations and fold it into kept weights.

Methods (`REPAIRS`, ``--repair NAME``): ``linear`` (least squares, ReplaceMe: the most expressive map each
architecture lets us fold exactly, see `prune.repair.linear`), ``scale`` (Prune&Comp: one
magnitude-ratio scalar, see `prune.repair.scale`) and ``none``. `repair_cut` repairs a pruned model
in place; nothing is added to the model, so it stays a stock checkpoint. `prune.repair.refit.refit_model`
(``repair_cut(refit=True)``, ``--refit``) then refits the kept down projections so that the pruned
model's stream tracks the original's (error-correcting, block by block). `repair_from_options` calls
`repair_cut` as a run with given `prune.options.PruneOptions` does.

Example:
    >>> from prune.repair import REPAIRS
    >>> sorted(REPAIRS.names())
    ['linear', 'none', 'scale']
"""

from __future__ import annotations

# Each method registers itself when its module is imported.
from prune.repair import linear as _linear
from prune.repair import none as _none
from prune.repair import scale as _scale
from prune.repair.base import REPAIRS, Fit, RepairError, RepairMethod, RepairReport, SpanRepair, get_repair
from prune.repair.from_options import repair_from_options
from prune.repair.stage import SpanTask, fit_spans, repair_cut

del _linear, _none, _scale

__all__ = [
    "REPAIRS",
    "Fit",
    "RepairError",
    "RepairMethod",
    "RepairReport",
    "SpanRepair",
    "SpanTask",
    "fit_spans",
    "get_repair",
    "repair_cut",
    "repair_from_options",
]
