"""Second-moment statistics of the FFN neurons: the input of every block's down projection.

The down projection reads the intermediate neurons ``a`` (``act(gate x) * (up x)`` in a gated MLP,
``act(up x)`` otherwise), so its *input* is the one capture site that gives them for every family. Per
block we keep the float64 Gram ``A^T A`` [d_ff, d_ff] and the column sums [d_ff] over the calibration
tokens (padding masked, processes reduced: `prune.collect.collect_site_sums`); every selection method and
the compensation are computed from these two sums.

Memory: a Gram costs ``d_ff^2 * 8`` bytes (SmolLM2-135M, d_ff 1536: 18.9 MB; MiniLM-L6, 1536: the same;
Llama-2-7B, 11008: 969 MB), plus a float32 batch product of half that while it is added. Blocks are
collected in groups, one calibration pass per group, and only one group's statistics are alive at a
time, so a group of G blocks holds G Grams, or 2 G with the squeeze's auto ridge (the default: the
fitted-on and the held-back batches are summed apart, `prune.width.ridge.collect_split_stats`). The
default group (`block_groups`) is as many blocks as keep those Grams under `DEFAULT_MAX_BYTES` = 2 GiB:
all 30 blocks of SmolLM2 in one pass (1.1 GB with the auto ridge); for a 7B model two blocks per pass
with one Gram each (`prune-llm analyze`, a fixed ridge), one with the auto ridge. The bound is on the
statistics only: on top come one batch's forward activations and, while a block is selected and folded,
a few of its Grams' worth of moments, factors and float64 weight copies, freed block by block; glibc's
heap may keep freed Grams resident (measured: benchmarks/README.md, "FFN statistics memory against the
block group").

Example:
    >>> groups = block_groups(num_blocks=6, d_ff=64, group=None)
    >>> groups
    [[0, 1, 2, 3, 4, 5]]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prune.collect.capture import CaptureSite, collect_site_sums, column_sum, gram

DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass
class FfnStats:
    """The neuron statistics of one block.

    Attributes:
        gram: float64 [d_ff, d_ff] sum over tokens of ``a a^T``.
        total: float64 [d_ff] sum over tokens of ``a``.
        num_tokens: Number of tokens summed.
    """

    gram: Tensor
    total: Tensor
    num_tokens: int

    @property
    def mean(self) -> Tensor:
        return self.total / max(self.num_tokens, 1)

    def __add__(self, other: FfnStats) -> FfnStats:
        """The statistics of both token sets together (the sums add)."""
        return FfnStats(self.gram + other.gram, self.total + other.total, self.num_tokens + other.num_tokens)

    def second_moment(self, *, centred: bool) -> Tensor:
        """``E[a a^T]`` (or the covariance when `centred`), float64 [d_ff, d_ff]."""
        moment = self.gram / max(self.num_tokens, 1)
        if centred:
            mean = self.mean
            moment = moment - torch.outer(mean, mean)
        return moment


def gram_bytes(d_ff: int) -> int:
    """Bytes of one block's float64 Gram."""
    return d_ff * d_ff * 8


def block_groups(
    num_blocks: int,
    d_ff: int,
    group: int | None,
    *,
    max_bytes: int | None = None,
    grams_per_block: int = 1,
) -> list[list[int]]:
    """Split the blocks into the groups collected in one pass each.

    Args:
        num_blocks: Number of blocks.
        d_ff: Their intermediate size.
        group: Blocks per pass; None: as many as keep the Grams under `max_bytes` (at least one).
        max_bytes: Memory bound of the Grams held at once when `group` is None (default
            `DEFAULT_MAX_BYTES`).
        grams_per_block: Grams each block holds (2 with the auto ridge: the fitted-on and the held-back
            sums, `prune.width.ridge.collect_split_stats`).
    """
    if group is None:
        bound = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        group = max(1, int(bound // max(grams_per_block * gram_bytes(d_ff), 1)))
    group = max(1, min(group, num_blocks))
    return [list(range(start, min(start + group, num_blocks))) for start in range(0, num_blocks, group)]


def collect_ffn_stats(
    model: nn.Module,
    batches: Iterable[Any],
    anatomy: Any,
    blocks: Sequence[int],
    *,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> dict[int, FfnStats]:
    """Collect the neuron Gram and sums of the given blocks in one calibration pass.

    Args:
        model: The model as it is now (after any depth cut and earlier squeezing).
        batches: Calibration batches (as for `prune.collect.collect_stats`).
        anatomy: Its anatomy, with an MLP (`anatomy.require_mlp`).
        blocks: Indices of the blocks to collect.
        max_tokens: Token budget; skip_tokens: tokens left out at the start of every sequence.
        accelerator: Optional ``accelerate.Accelerator`` (processes are reduced).
        progress: Show a progress bar.

    Returns:
        One `FfnStats` per block index.
    """
    mlp = anatomy.require_mlp("width squeezing")
    sites = {f"a{b}": CaptureSite(b, mlp.down, "input") for b in blocks}
    sums = [s for b in blocks for s in (gram(f"g{b}", f"a{b}"), column_sum(f"s{b}", f"a{b}"))]
    stats = collect_site_sums(
        model,
        batches,
        sites,
        sums,
        anatomy=anatomy,
        accelerator=accelerator,
        max_tokens=max_tokens,
        skip_tokens=skip_tokens,
        progress=progress,
        desc=f"FFN statistics, blocks {blocks[0]}-{blocks[-1]}",
    )
    return {b: FfnStats(stats.sums[f"g{b}"], stats.sums[f"s{b}"], stats.num_tokens) for b in blocks}


__all__ = ["DEFAULT_MAX_BYTES", "FfnStats", "block_groups", "collect_ffn_stats", "gram_bytes"]
