"""Cosine statistics: block influence (ShortGPT) and angular distance over spans (Gromov et al. 2024).

Both read per-sample cosines between hidden states h_i and h_j (h_0 = input of block 0, h_{l+1} =
output of block l), computed once per batch in float32 and summed over samples in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from prune.metrics.base import SUMS, Metric, RunningSum, Samples, check_count, register_metric


def _add_cosines(total: Tensor, samples: Samples) -> None:
    total += samples.cosines.sum(0, dtype=torch.float64).cpu()


def _add_angles(total: Tensor, samples: Samples) -> None:
    # arccos in float64: near cos = 1 its slope is unbounded, so keep the rounding of the float32 cosine only.
    total += torch.arccos(samples.cosines.double()).sum(0).cpu() / math.pi


SUMS.register(
    "cos",
    RunningSum("cos", lambda s: (s, s), _add_cosines, "sum over samples of cos(h_i, h_j), all pairs"),
)
SUMS.register(
    "angle",
    RunningSum("angle", lambda s: (s, s), _add_angles, "sum over samples of arccos(cos(h_i, h_j)) / pi"),
)


def block_influence(sums: Mapping[str, Tensor]) -> Tensor:
    """BI_l = 1 - mean cos(h_l, h_{l+1}), one value per block ([L], float64).

    Example:
        >>> s = {"cos": torch.tensor([[3.0, 1.5], [1.5, 3.0]], dtype=torch.float64), "samples": torch.tensor(3.0)}
        >>> block_influence(s)
        tensor([0.5000], dtype=torch.float64)
    """
    count = check_count(sums["samples"], "samples")
    mean_cos = sums["cos"].double() / count
    return 1.0 - torch.diagonal(mean_cos, offset=1).clone()


def angular_distance(sums: Mapping[str, Tensor]) -> Tensor:
    """[L+1, L+1] mean angular distance arccos(cos)/pi between every pair of hidden states.

    Symmetric with a zero diagonal; the distance of cutting blocks l..l+n-1 is ``result[l, l + n]``.

    Example:
        >>> s = {"angle": torch.ones(3, 3, dtype=torch.float64), "samples": torch.tensor(4.0)}
        >>> angular_distance(s)[0, 1].item()
        0.25
    """
    count = check_count(sums["samples"], "samples")
    mean = sums["angle"].double() / count
    mean = (mean + mean.T) / 2
    mean.fill_diagonal_(0.0)
    return mean


register_metric(
    Metric(
        "bi",
        ("cos", "samples"),
        block_influence,
        "block influence (ShortGPT): 1 - mean cos(input, output) of each block, [L]",
    )
)
register_metric(
    Metric(
        "angular",
        ("angle", "samples"),
        angular_distance,
        "mean angular distance arccos(cos)/pi between all hidden states, [L+1, L+1]",
    )
)
