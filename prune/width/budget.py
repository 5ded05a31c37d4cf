"""The FFN width budget users write (``--ffn-keep``): light to import (no torch), the options validate it.

Example:
    >>> parse_ffn_keep(0.75).fraction, parse_ffn_keep("auto:0.99").energy
    (0.75, 0.99)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prune.errors import TargetError

_AUTO = re.compile(r"^auto:(?P<energy>[0-9.eE+-]+)$")


@dataclass(frozen=True)
class KeepBudget:
    """A parsed ``--ffn-keep``: a fraction of the neurons, or a fraction of the activation energy."""

    fraction: float | None = None
    energy: float | None = None

    def count(self, size: int) -> int | None:
        """Neurons a block of `size` keeps under a fraction (at least one); None for an energy budget, whose
        count comes from the blocks' energy curves.

        Example:
            >>> parse_ffn_keep(0.75).count(1536), parse_ffn_keep("auto:0.99").count(1536)
            (1152, None)
        """
        return None if self.fraction is None else max(1, round(self.fraction * size))

    def describe(self) -> str:
        return (
            f"{self.fraction:g} of the neurons"
            if self.fraction is not None
            else f"{self.energy:g} of the energy"
        )


def parse_ffn_keep(value: float | str) -> KeepBudget:
    """Parse ``0.75`` (keep 75% of each FFN's neurons) or ``auto:0.99`` (keep 99% of the activation energy).

    Raises:
        TargetError: a fraction outside (0, 1], an energy outside (0, 1), anything else.

    Example:
        >>> parse_ffn_keep("auto:0.99").energy
        0.99
    """
    text = str(value).strip()
    match = _AUTO.match(text)
    try:
        number = float(match.group("energy") if match else text)
    except ValueError:
        raise TargetError(
            f"--ffn-keep {text!r} is neither a fraction nor auto:E; write e.g. 0.75 or auto:0.99"
        ) from None
    if match:
        if not 0 < number < 1:
            raise TargetError(
                f"--ffn-keep auto:{number:g}: the energy to keep must lie in (0, 1), e.g. auto:0.99"
            )
        return KeepBudget(energy=number)
    if not 0 < number <= 1:
        raise TargetError(
            f"--ffn-keep {number:g}: the fraction of neurons to keep must lie in (0, 1], e.g. 0.75"
        )
    return KeepBudget(fraction=number)


__all__ = ["KeepBudget", "parse_ffn_keep"]
