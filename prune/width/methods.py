"""The FFN width methods users pick by name (`--ffn-method`): a selection plus a compensation.

A method is an instance, not a subclass: the same two parts in other combinations.

| name | selection | compensation |
|---|---|---|
| squeeze (default) | output-aware backward elimination (OBS) | least squares folded into down |
| squeeze-forward | output-aware greedy forward selection | least squares |
| textbook | pivoted Cholesky of the activations (Ozen & Orailoglu) | least squares |
| pivot | squeeze's selection | none (the neurons are just removed) |
| magnitude | weight norms | none |
| wanda | ``||W_{:,j}|| * ||a_j||`` | none |
| flap | fluctuation ``Var(a_j) ||W_{:,j}||^2`` | removed means into the down bias (where it has one) |
"""

from __future__ import annotations

from dataclasses import dataclass

from prune.registry import Registry
from prune.width.compensate import Compensation
from prune.width.selection import SELECTORS


@dataclass(frozen=True)
class FfnMethod:
    """One width method.

    Attributes:
        name: Registry name.
        selection: Key of `prune.width.selection.SELECTORS`.
        compensation: "ls", "bias" or "none" (see `prune.width.compensate.interpolation`).
        description: One line for help texts and reports.
    """

    name: str
    selection: str
    compensation: Compensation
    description: str

    def __post_init__(self) -> None:
        if self.selection not in SELECTORS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {sorted(SELECTORS)}")


FFN_METHODS: Registry[FfnMethod] = Registry("FFN method")


def _register(name: str, selection: str, compensation: Compensation, description: str) -> None:
    FFN_METHODS.register(name, FfnMethod(name, selection, compensation, description))


_register(
    "squeeze",
    "output",
    "ls",
    "output-aware selection (backward elimination on the down projection's output error) with the "
    "removed neurons folded into the down projection by least squares",
)
_register(
    "squeeze-forward",
    "output_forward",
    "ls",
    "output-aware greedy forward selection with least-squares compensation",
)
_register(
    "textbook",
    "activation",
    "ls",
    "Ozen & Orailoglu: pivoted Cholesky of the activation Gram, least-squares compensation",
)
_register("pivot", "output", "none", "squeeze's selection without compensation")
_register("magnitude", "magnitude", "none", "weight norms (down column x input rows), no compensation")
_register("wanda", "wanda", "none", "Wanda: ||down[:, j]|| * ||a_j||, no compensation")
_register(
    "flap",
    "flap",
    "bias",
    "FLAP: fluctuation Var(a_j) ||down[:, j]||^2, removed means folded into the down bias (if any)",
)

DEFAULT_METHOD = "squeeze"

__all__ = ["DEFAULT_METHOD", "FFN_METHODS", "FfnMethod"]
