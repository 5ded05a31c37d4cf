"""What a score means, in one place: its shape, its direction, how spans and MSRS are read from it.

The collector (`prune.collect`) returns raw tensors by metric name. Hidden states are numbered h_0
(the embedding output, the input of block 0) to h_L (the output of block L-1), so:

- ``bi`` [L] and ``cka_io`` [L] are per block; ``angular`` and ``cka`` [L+1, L+1] are matrices over
  hidden states, and ``matrix[l, l + n]`` compares the input of block l with the output of block
  l+n-1: cutting the span l .. l+n-1.
- ``cka_io`` is the first off-diagonal of ``cka``; the angular distance across one block is the first
  off-diagonal of ``angular``.
- A LOW ``bi`` or ``angular`` and a HIGH ``cka_io`` mark a redundant block (`REDUNDANT_WHEN_LOW`).
- MSRS (RedTest) is computed on the block outputs: ``cka[1:, 1:]``, with the run's beta and eps.

`prune.analysis.Analysis`, the planner (`prune.plan.scoring`) and the report read scores through
these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prune.vocab import MSRS_BETA, MSRS_EPS

__all__ = [
    "PAIRWISE",
    "REDUNDANT_WHEN_LOW",
    "SCORE_LABELS",
    "expected_shape",
    "off_diagonal",
    "span_distances",
    "split_scores",
    "summarise_msrs",
]

PAIRWISE = frozenset({"angular", "cka"})
# Per-block scores, and whether a LOW value marks a redundant block (one that changes its input little).
REDUNDANT_WHEN_LOW = {"bi": True, "cka_io": False, "angular": True}
SCORE_LABELS = {"bi": "BI", "cka_io": "CKA(in,out)", "angular": "angular(l,l+1)"}


def expected_shape(name: str, num_blocks: int) -> tuple[int, ...] | None:
    """The shape of score `name` for a model of `num_blocks` blocks (None for a name not known here).

    Example:
        >>> expected_shape("cka", 4), expected_shape("bi", 4)
        ((5, 5), (4,))
    """
    if name in PAIRWISE:
        return (num_blocks + 1, num_blocks + 1)
    if name in ("bi", "cka_io"):
        return (num_blocks,)
    return None


def off_diagonal(matrix: Tensor) -> Tensor:
    """``matrix[l, l + 1]`` for every block l: a pairwise score across one block (cka -> cka_io).

    Example:
        >>> off_diagonal(torch.arange(9.0).view(3, 3)).tolist()
        [1.0, 5.0]
    """
    return torch.diagonal(matrix, offset=1).clone()


def split_scores(scores: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The per-block scores and the matrices of a score dict, apart.

    Example:
        >>> per_block, matrices = split_scores({"bi": torch.zeros(3), "cka": torch.zeros(4, 4)})
        >>> list(per_block), list(matrices)
        (['bi'], ['cka'])
    """
    per_block = {name: value for name, value in scores.items() if value.dim() == 1}
    matrices = {name: value for name, value in scores.items() if value.dim() == 2}
    return per_block, matrices


def span_distances(
    matrix: Tensor, num_blocks: int, num_drop: int, allow_last: bool, first: int = 0
) -> dict[int, float]:
    """``{start: matrix[start, start + num_drop]}`` for every span of `num_drop` blocks from `first` on.

    Without `allow_last` a span must end before the last block (``start + num_drop <= L - 1``).

    Example:
        >>> span_distances(torch.arange(16.0).view(4, 4), 4, 2, allow_last=False)
        {0: 2.0, 1: 7.0}
    """
    last_start = num_blocks - num_drop if allow_last else num_blocks - 1 - num_drop
    return {start: float(matrix[start, start + num_drop]) for start in range(first, last_start + 1)}


def summarise_msrs(
    scores: Mapping[str, Tensor], *, beta: float = MSRS_BETA, eps: float = MSRS_EPS
) -> dict[str, Any] | None:
    """MSRS of the block outputs, raw and normalised by the L(L-1)/2 block pairs, with its parameters;
    None without a ``cka`` matrix or with fewer than two blocks.

    Example:
        >>> summarise_msrs({"cka": torch.ones(4, 4)})["raw"]
        3.0
    """
    if "cka" not in scores or scores["cka"].shape[0] < 3:  # MSRS counts pairs of blocks
        return None
    from prune.metrics import msrs

    # RedTest's S is the CKA matrix of the block outputs h_1..h_L, without the embedding output.
    raw, normalised = msrs(scores["cka"][1:, 1:], beta=beta, eps=eps)
    return {"raw": float(raw), "normalised": float(normalised), "beta": float(beta), "eps": float(eps)}
