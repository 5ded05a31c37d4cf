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

from collections.abc import Callable, Iterator, Sequence
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
    """Buffers samples across batches in one window of W samples and cuts each full window into minibatches.

    The buffer is allocated once ([S, W, d], the samples' dtype: a bfloat16 run holds half the bytes)
    and refilled in place, so memory is one window whatever the batch size; a full window's minibatches
    go to `consume` before the buffer takes the next samples.

    Args:
        size: m, samples per minibatch (>= MIN_GROUP).
        window: W, samples per window; rounded down to a multiple of `size` (at least `size`).
        seed: Seed of the permutation applied to each window; None keeps stream order.

    Example:
        >>> stream, seen = MinibatchStream(size=4, window=8, seed=0), []
        >>> stream.add([torch.randn(10, 3), torch.randn(10, 3)], seen.append)
        >>> len(seen[0]), stream.pending.shape
        (2, torch.Size([2, 2, 3]))
    """

    def __init__(self, size: int, window: int, seed: int | None) -> None:
        if size < MIN_GROUP:
            raise ValueError(f"a CKA minibatch needs at least {MIN_GROUP} samples, got {size}")
        self.size = size
        self.window = max(size, window // size * size)
        self.seed = seed
        self._buffer: Tensor | None = None
        self._fill = 0
        self._orders: dict[int, Tensor] = {}

    @property
    def pending(self) -> Tensor | None:
        """[S, n, d]: the samples of the incomplete window (a view), None when it is empty."""
        return None if self._buffer is None or self._fill == 0 else self._buffer[:, : self._fill]

    @pending.setter
    def pending(self, samples: Tensor | None) -> None:
        """Start from the samples of an incomplete window (from a state file)."""
        self._buffer, self._fill = None, 0
        if samples is not None and samples.shape[1]:
            self._allocate(samples.shape[0], samples.shape[2], samples.dtype, samples.device)
            self._buffer[:, : samples.shape[1]] = samples
            self._fill = samples.shape[1]

    def _allocate(self, states: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self._buffer = torch.empty(states, self.window, dim, dtype=dtype, device=device)

    def _order(self, length: int) -> Tensor:
        """The permutation of `length` window positions (the same for every window of that length)."""
        if length not in self._orders:
            if self.seed is None:
                order = torch.arange(length)
            else:
                order = torch.randperm(length, generator=torch.Generator().manual_seed(self.seed))
            self._orders[length] = order
        return self._orders[length]

    def _cut(self, samples: Tensor) -> Minibatches:
        """The minibatches of one window: its samples permuted, then runs of m (the last >= MIN_GROUP)."""
        order = self._order(samples.shape[1]).to(samples.device)
        index = [order[i : i + self.size] for i in range(0, len(order), self.size)]
        return Minibatches(samples, [i for i in index if i.numel() >= MIN_GROUP])

    def add(self, rows: Sequence[Tensor], consume: Callable[[Minibatches], None]) -> None:
        """Append one batch's samples (S tensors [n, d]); hand every window they complete to `consume`."""
        count = rows[0].shape[0] if rows else 0
        if count == 0:
            return
        if self._buffer is None:
            self._allocate(len(rows), rows[0].shape[1], rows[0].dtype, rows[0].device)
        elif self._buffer.device != rows[0].device:  # resumed from a state file (CPU) on an accelerator
            self._buffer = self._buffer.to(rows[0].device)
        buffer = self._buffer
        start = 0
        while start < count:
            take = min(count - start, self.window - self._fill)
            for state, row in enumerate(rows):
                buffer[state, self._fill : self._fill + take] = row[start : start + take]
            self._fill += take
            start += take
            if self._fill == self.window:
                consume(self._cut(buffer))
                self._fill = 0

    def flush(self, consume: Callable[[Minibatches], None]) -> None:
        """Hand the incomplete last window's minibatches to `consume` (its samples stay pending)."""
        if self.pending is not None:
            consume(self._cut(self.pending))
