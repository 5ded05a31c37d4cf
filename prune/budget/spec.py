"""Budgets a user states instead of a block count: ``params:100M``, ``size:350MB``, ``latency:0.7x``,
``loss:1.10x``.

- ``params:N`` — at most N parameters (``100M``, ``1.5B``, ``800K`` or a plain number).
- ``size:S`` — at most S bytes of weights (``350MB``, ``1.2GB``, ``512MiB``; decimal and binary units).
- ``latency:Fx`` — a forward pass at most F times the original's, measured on this machine (0 < F < 1).
- ``loss:Fx`` — the smallest model whose perplexity on held-back calibration text stays within F times
  the original's (F > 1).

Example:
    >>> parse_budget("params:100M")
    Budget(kind='params', value=100000000.0, text='params:100M')
    >>> parse_budget("size:1.5GB").value
    1500000000.0
    >>> parse_budget("loss:1.10x").value
    1.1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from prune.errors import BudgetError

BudgetKind = Literal["params", "size", "latency", "loss"]
KINDS: tuple[BudgetKind, ...] = ("params", "size", "latency", "loss")
FORMS = "'params:100M', 'size:350MB', 'latency:0.7x' or 'loss:1.10x'"

_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_BYTE_UNITS = {
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2.0**10,
    "mib": 2.0**20,
    "gib": 2.0**30,
    "tib": 2.0**40,
}
_NUMBER = r"(?P<number>\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class Budget:
    """A parsed budget.

    Attributes:
        kind: "params", "size", "latency" or "loss".
        value: Parameters, bytes, or the ratio to the original (latency, loss).
        text: What the user wrote.
    """

    kind: BudgetKind
    value: float
    text: str

    @property
    def is_ratio(self) -> bool:
        """True for budgets relative to the original model (latency, loss)."""
        return self.kind in ("latency", "loss")

    def describe(self) -> str:
        """The budget in words, e.g. 'at most 100M parameters'.

        Example:
            >>> parse_budget("params:100M").describe(), parse_budget("params:40k").describe()
            ('at most 100M parameters', 'at most 40k parameters')
        """
        if self.kind == "params":
            return f"at most {si_count(self.value, '')} parameters"
        if self.kind == "size":
            return f"at most {si_count(self.value, 'B')} of weights"
        if self.kind == "latency":
            return f"a forward pass at most {self.value:g}x the original's"
        return f"held-back calibration perplexity at most {self.value:g}x the original's"


def si_count(value: float, unit: str) -> str:
    """A count in the largest SI unit that keeps it at or above 1 (100M, 350MB, 40k, 512B)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.4g}{prefix}{unit}"
    return f"{value:.4g}{unit}" if unit else f"{value:.4g}"


def parse_budget(text: str) -> Budget:
    """Read a budget as the user wrote it.

    Args:
        text: ``KIND:VALUE`` with KIND one of params, size, latency, loss.

    Returns:
        The `Budget`.

    Raises:
        BudgetError: an unknown kind, a malformed or out-of-range value.
    """
    if not isinstance(text, str) or ":" not in text:
        raise BudgetError(f"cannot read budget {text!r}; write it as {FORMS}")
    kind, _, raw = text.strip().partition(":")
    kind, raw = kind.strip().lower(), raw.strip().lower().replace(" ", "")
    if kind not in KINDS:
        raise BudgetError(
            f"unknown budget kind {kind!r} in {text!r}; use one of {', '.join(KINDS)} ({FORMS})"
        )
    if kind == "params":
        match = re.fullmatch(_NUMBER + r"(?P<unit>[kmbg]?)", raw)
        if match is None:
            raise BudgetError(
                f"cannot read parameter budget {text!r}; write e.g. 'params:100M' or 'params:1.5B'"
            )
        value = float(match["number"]) * _COUNT_UNITS[match["unit"]]
    elif kind == "size":
        match = re.fullmatch(_NUMBER + r"(?P<unit>[kmgt]?i?b)", raw)
        if match is None or match["unit"] not in _BYTE_UNITS:
            raise BudgetError(f"cannot read size budget {text!r}; write e.g. 'size:350MB' or 'size:1.2GB'")
        value = float(match["number"]) * _BYTE_UNITS[match["unit"]]
    else:
        match = re.fullmatch(_NUMBER + r"x?", raw)
        if match is None:
            raise BudgetError(f"cannot read {kind} budget {text!r}; write e.g. '{kind}:{_example(kind)}'")
        value = float(match["number"])
        if kind == "latency" and not 0 < value < 1:
            raise BudgetError(
                f"latency budget {text!r} must be a fraction of the original's latency, 0 < F < 1; "
                "write e.g. 'latency:0.7x'"
            )
        if kind == "loss" and value <= 1:
            raise BudgetError(
                f"loss budget {text!r} must allow some loss, F > 1 times the original perplexity; "
                "write e.g. 'loss:1.10x'"
            )
    if value <= 0:
        raise BudgetError(f"budget {text!r} must be positive; write it as {FORMS}")
    return Budget(kind=kind, value=value, text=text.strip())  # type: ignore[arg-type]


def _example(kind: str) -> str:
    return "0.7x" if kind == "latency" else "1.10x"


__all__ = ["KINDS", "Budget", "BudgetKind", "parse_budget"]
