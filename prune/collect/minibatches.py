"""CKA minibatches cut from the stream of samples, with memory bounded by one window.

The unbiased HSIC of a minibatch estimates the HSIC of the population the minibatch is drawn from.
Tokens of one sequence share their context, so a minibatch made of one sequence measures how the blocks
agree within a context and overstates CKA (by 0.06 for CKA(embeddings, block 6) on all-MiniLM-L6-v2
against the full-batch estimator on the same tokens). In "tokens" mode the valid tokens of consecutive
batches therefore fill a window of W tokens (in stream order); a full window is permuted and cut into
W / m minibatches of m tokens, each drawn across the window's sequences.

Every full window is permuted by the same permutation of W positions, drawn from the run's seed: which
minibatch a token joins depends only on its position in the stream. The sums are then the same however
the stream is split into batches or resumed, and over processes when each process's shard is a run of
whole windows. The last, incomplete window of n tokens is permuted by a permutation of n positions from
the same seed and cut the same way; its last minibatch counts if it has at least MIN_GROUP tokens.

The pooled modes ("mean", "last") use the same stream unshuffled with W = m = G: groups of G
consecutive sequences, which already come from different texts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from prune.metrics.base import MIN_GROUP


@dataclass
class Minibatches:
    """Minibatches taken from `samples` [S, n, d] by index, copied one at a time as they are read."""

    samples: Tensor
    index: list[Tensor]

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[Tensor]:
        for index in self.index:
            yield self.samples.index_select(1, index)


class MinibatchStream:
    """Buffers samples [S, n, d] across batches and cuts each full window into minibatches.

    Args:
        size: m, samples per minibatch (>= MIN_GROUP).
        window: W, samples per window; rounded down to a multiple of `size` (at least `size`).
        seed: Seed of the permutation applied to each window; None keeps stream order.
        pending: Samples of an incomplete window carried over (from a state file).

    Example:
        >>> stream = MinibatchStream(size=4, window=8, seed=0)
        >>> len(stream.add(torch.randn(2, 10, 3))), stream.pending.shape[1]
        (2, 2)
    """

    def __init__(self, size: int, window: int, seed: int | None, pending: Tensor | None = None) -> None:
        if size < MIN_GROUP:
            raise ValueError(f"a CKA minibatch needs at least {MIN_GROUP} samples, got {size}")
        self.size = size
        self.window = max(size, window // size * size)
        self.seed = seed
        self.pending = pending
        self._orders: dict[int, Tensor] = {}

    def _order(self, length: int) -> Tensor:
        """The permutation of `length` window positions (the same for every window of that length)."""
        if length not in self._orders:
            if self.seed is None:
                order = torch.arange(length)
            else:
                order = torch.randperm(length, generator=torch.Generator().manual_seed(self.seed))
            self._orders[length] = order
        return self._orders[length]

    def _cut(self, samples: Tensor, windows: int, length: int) -> Minibatches:
        """Minibatches of `windows` consecutive windows of `length` samples at the start of `samples`."""
        order = self._order(length).to(samples.device)
        index = []
        for start in range(0, windows * length, length):
            positions = order + start
            index += [positions[i : i + self.size] for i in range(0, length, self.size)]
        return Minibatches(samples, [i for i in index if i.numel() >= MIN_GROUP])

    def add(self, samples: Tensor) -> Minibatches:
        """Append `samples` [S, n, d] to the pending ones; return the minibatches of the windows completed.

        The pending samples keep their dtype (the model's): a bfloat16 run buffers half the bytes.
        """
        if self.pending is not None:
            samples = torch.cat([self.pending.to(samples.device, samples.dtype), samples], dim=1)
        windows = samples.shape[1] // self.window
        used = windows * self.window
        rest = samples[:, used:]
        self.pending = rest.clone() if rest.shape[1] else None
        return self._cut(samples[:, :used], windows, self.window)

    def flush(self) -> Minibatches:
        """Minibatches of the incomplete last window (its pending samples stay pending)."""
        if self.pending is None:
            return Minibatches(torch.zeros(0, 0, 0), [])
        return self._cut(self.pending, 1, self.pending.shape[1])
