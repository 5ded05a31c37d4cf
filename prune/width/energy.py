"""How many FFN neurons each block needs: the "information content" of Ozen & Orailoglu, per block.

For every block, the pivoted Cholesky of its neurons' moment (covariance where the down projection has
a bias, else ``E[a a^T]``: the same moment the squeeze fits on) gives the fewest neurons that keep a
fraction E of the activation energy; `neurons_needed` reports it for E = 0.9, 0.99, 0.999. One
calibration pass per group of blocks (`prune.width.stats.block_groups`), nothing is modified.

Example:
    >>> needed = neurons_needed(model, batches)  # doctest: +SKIP
    >>> needed.counts[0]  # doctest: +SKIP
    {'0.9': 412, '0.99': 1010, '0.999': 1380}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from prune.width.squeeze import ENERGY_LEVELS


@dataclass
class NeuronsNeeded:
    """Per block, the neurons that keep each fraction of the activation energy.

    Attributes:
        size: d_ff of every block.
        levels: The energy fractions.
        counts: One dict per block: ``f"{level:g}" -> neurons``.
        num_tokens: Calibration tokens the moments were taken over.
    """

    size: int
    levels: tuple[float, ...]
    counts: list[dict[str, int]]
    num_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table_lines(self) -> list[str]:
        """A plain-text table: block, then neurons (and % of d_ff) per level."""
        keys = [f"{level:g}" for level in self.levels]
        lines = [
            f"FFN neurons needed per block (of {self.size}) to keep a fraction of the activation energy:",
            "block " + " ".join(f"{k + ' energy':>16}" for k in keys),
        ]
        for block, counts in enumerate(self.counts):
            cells = " ".join(f"{counts[k]:>9} ({counts[k] / self.size:>4.0%})" for k in keys)
            lines.append(f"{block:>5} {cells}")
        return lines


def neurons_needed(
    model: nn.Module,
    batches: Sequence[Any],
    *,
    anatomy: Any = None,
    levels: Sequence[float] = ENERGY_LEVELS,
    block_group: int | None = None,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> NeuronsNeeded:
    """Count, per block, the FFN neurons that keep each fraction in `levels` of the activation energy.

    Raises:
        AnatomyError: the family's MLP is not known.
    """
    from prune.anatomy import get_anatomy
    from prune.width.compensate import block_problem
    from prune.width.selection import energy_curve
    from prune.width.selection import neurons_needed as count_for
    from prune.width.stats import block_groups, collect_ffn_stats

    anatomy = anatomy if anatomy is not None else get_anatomy(model)
    mlp = anatomy.require_mlp("counting FFN neurons")
    blocks = anatomy.blocks(model)
    sizes = [mlp.intermediate_size(block) for block in blocks]
    counts: list[dict[str, int]] = []
    tokens = 0
    for group in block_groups(len(blocks), max(sizes), block_group):
        stats = collect_ffn_stats(
            model,
            batches,
            anatomy,
            group,
            max_tokens=max_tokens,
            skip_tokens=skip_tokens,
            accelerator=accelerator,
            progress=progress,
        )
        for b in group:
            curve = energy_curve(
                block_problem(mlp.parts(blocks[b]), stats[b]).fit_moment(), limit=max(levels)
            )
            counts.append({f"{level:g}": count_for(curve, level, sizes[b]) for level in levels})
            tokens = stats[b].num_tokens
        del stats  # before the next group is collected: one group's Grams at a time
    return NeuronsNeeded(size=max(sizes), levels=tuple(levels), counts=counts, num_tokens=tokens)


__all__ = ["NeuronsNeeded", "neurons_needed"]
