"""The two registries behind layer statistics: running sums and the metrics computed from them.

A *running sum* is a float64 tensor the collector adds to once per batch (and that processes add
together at the end). A *metric* names the running sums it needs and turns their totals into a
result. Metrics that share a sum ("cka" and "cka_io" both read "hsic") make the collector
accumulate it once.

Per batch the collector hands every running sum the same :class:`Samples`, which computes what
several sums share (the per-sample cosine matrix) once, on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from prune.registry import Registry
from prune.vocab import TOKEN_MODES  # noqa: F401 (importable from here)

# Samples per chunk when computing per-sample cosine matrices: bounds the float32 temporaries.
_COSINE_CHUNK = 256
MIN_GROUP = 4  # the unbiased HSIC estimator divides by n (n - 3)


@dataclass
class Samples:
    """One batch's hidden states, masked to the valid tokens, as the running sums read them.

    Args:
        states: S = L+1 tensors [B, T, d] (h_0 = input of block 0, h_{l+1} = output of block l), all on
            one device.
        mask: bool [B, T], True on the tokens that count (padding and tokens past the budget excluded).
        mode: "tokens" (each valid token is a sample) or "mean" / "last" (one pooled vector per
            sequence is a sample).
        minibatches: the CKA minibatches this batch completed, each [S, n, d]: the collector buffers
            samples across batches and cuts them (`prune.collect.minibatches`), tokens drawn across
            sequences in "tokens" mode, groups of consecutive sequences in the pooled modes.
    """

    states: Sequence[Tensor]
    mask: Tensor
    mode: str = "tokens"
    minibatches: Collection[Tensor] = ()

    @cached_property
    def lengths(self) -> Tensor:
        """Valid tokens per sequence, int64 [B]."""
        return self.mask.sum(1)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def num_sequences(self) -> int:
        return int((self.lengths > 0).sum())

    @cached_property
    def rows(self) -> list[Tensor]:
        """S tensors [n, d]: the valid tokens ("tokens"; views when nothing is masked) or one pooled
        float32 vector per non-empty sequence ("mean", "last"), in sequence order.

        Once gathered, `states` is released (set to an empty tuple): a masked gather copies, and the
        originals would double the batch's memory.
        """
        rows = self._gather_rows()
        self.states = ()
        return rows

    def _gather_rows(self) -> list[Tensor]:
        if self.mode == "tokens":
            if bool(self.mask.all()):  # packed batches: a reshape, not a boolean gather
                return [h.reshape(-1, h.shape[-1]) for h in self.states]
            return [h[self.mask] for h in self.states]
        keep = self.lengths > 0
        if self.mode == "mean":
            weights = self.mask[keep].unsqueeze(-1).float() / self.lengths[keep, None, None].float()
            return [(h[keep].float() * weights).sum(1) for h in self.states]
        # "last": the last valid position, wherever the padding is (left or right).
        positions = torch.arange(self.mask.shape[1], device=self.mask.device)
        last = torch.where(self.mask, positions, -1).amax(1)[keep]
        index = keep.nonzero().squeeze(1)
        return [h[index, last].float() for h in self.states]

    @property
    def num_samples(self) -> int:
        """Samples behind the cosine sums: valid tokens, or non-empty sequences when pooled."""
        return int(self.rows[0].shape[0]) if self.rows else 0

    @property
    def vectors(self) -> Tensor:
        """[S, n, d]: all samples stacked (a copy, which the collector buffers for CKA minibatches);
        tokens keep the hidden states' dtype, pooled vectors are float32."""
        return torch.stack(self.rows)

    def _stacked(self, start: int, end: int, dim: int) -> Tensor:
        return torch.stack([r[start:end] for r in self.rows], dim=dim).float()

    @cached_property
    def cosines(self) -> Tensor:
        """float32 [n, S, S]: cos(h_i, h_j) of every sample for every pair of hidden states."""
        s, n = len(self.rows), self.num_samples
        chunks = []
        # Chunks stacked sample-major ([chunk, S, d]): no full copy of the batch, and the batched
        # matmul runs on contiguous blocks (~5x faster than on a transposed view).
        for start in range(0, n, _COSINE_CHUNK):
            block = torch.nn.functional.normalize(
                self._stacked(start, min(start + _COSINE_CHUNK, n), 1), dim=-1
            )
            chunks.append(torch.bmm(block, block.transpose(1, 2)))
        if not chunks:
            return torch.zeros(0, s, s)
        cosines = torch.cat(chunks).clamp_(-1.0, 1.0)
        # cos(h, h) is 1 exactly; the GEMM's rounding (which depends on the chunk shapes) would otherwise
        # make the arccos of the diagonal, and so the sums, depend on how the data was batched.
        torch.diagonal(cosines, dim1=1, dim2=2).fill_(1.0)
        return cosines

    @property
    def num_groups(self) -> int:
        """CKA minibatches completed by this batch."""
        return len(self.minibatches)

    def groups(self) -> Iterator[Tensor]:
        """The CKA minibatches, [S, n, d] each (see `minibatches`)."""
        yield from self.minibatches


@dataclass(frozen=True)
class RunningSum:
    """A float64 total the collector accumulates batch by batch.

    Attributes:
        name: Registry name, referenced by metrics.
        shape: Shape of the total given S, the number of hidden states (L+1).
        update: Adds one batch's contribution to the total in place.
        description: One line for documentation.
    """

    name: str
    shape: Callable[[int], tuple[int, ...]]
    update: Callable[[Tensor, Samples], None]
    description: str

    def zeros(self, num_states: int) -> Tensor:
        """A zero total for a model with `num_states` hidden states."""
        return torch.zeros(self.shape(num_states), dtype=torch.float64)


@dataclass(frozen=True)
class Metric:
    """A layer metric computed from running sums.

    Attributes:
        name: Registry name users pick ("bi", "cka", ...).
        sums: Names of the running sums it reads.
        compute: Maps the totals (by sum name) to the result, a float64 CPU tensor.
        description: One line for documentation.
    """

    name: str
    sums: tuple[str, ...]
    compute: Callable[[Mapping[str, Tensor]], Tensor]
    description: str


SUMS: Registry[RunningSum] = Registry("running sum")
METRICS: Registry[Metric] = Registry("metric")


def _add_scalar(total: Tensor, value: float) -> None:
    total += value


# Counters every collection keeps, whatever the metrics.
SUMS.register(
    "tokens",
    RunningSum("tokens", lambda s: (), lambda t, b: _add_scalar(t, b.num_tokens), "valid tokens seen"),
)
SUMS.register(
    "sequences",
    RunningSum(
        "sequences",
        lambda s: (),
        lambda t, b: _add_scalar(t, b.num_sequences),
        "sequences with at least one valid token",
    ),
)
SUMS.register(
    "samples",
    RunningSum(
        "samples",
        lambda s: (),
        lambda t, b: _add_scalar(t, b.num_samples),
        "samples behind the cosine sums (tokens, or sequences when pooled)",
    ),
)
ALWAYS_SUMS = ("tokens", "sequences")
# Sums fed by CKA minibatches: the only ones a pooled-mode collection updates when it flushes its last group.
GROUP_SUMS = ("hsic", "hsic_groups")


def register_metric(metric: Metric) -> Metric:
    """Register `metric` after checking that every sum it names exists."""
    for name in metric.sums:
        SUMS.get(name)
    return METRICS.register(metric.name, metric)


def sums_for(metrics: Sequence[str]) -> tuple[str, ...]:
    """The running sums needed by `metrics`, each once, counters first.

    Example:
        >>> sums_for(["cka", "cka_io"])
        ('tokens', 'sequences', 'hsic', 'hsic_groups')
    """
    names = list(ALWAYS_SUMS)
    for metric in metrics:
        for name in METRICS.get(metric).sums:
            if name not in names:
                names.append(name)
    return tuple(names)


def check_count(total: Tensor, what: str) -> float:
    """The value of a counter, or a DataError when nothing was counted."""
    from prune.errors import DataError

    value = float(total)
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"no {what} were collected; pass more calibration data or a larger --max-tokens")
    return value
