"""Collected layer statistics (running sums plus what they were collected on) and their files.

A :class:`LayerStats` holds the float64 totals of the running sums; metrics are computed from them on
demand, so one collection serves every metric that shares its sums. The resumable-collection state
file uses the same format plus the position in the batch stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prune.errors import CollectError
from prune.metrics import METRICS

FORMAT_VERSION = 1


@dataclass
class LayerStats:
    """Running sums of a collection, from which every requested metric is computed.

    Attributes:
        num_blocks: L, the number of blocks (there are L+1 hidden states).
        metrics: Names of the metrics the sums serve (see :data:`prune.metrics.METRICS`).
        sums: float64 CPU totals by running-sum name, already reduced over processes.
        token_mode: "tokens", "mean" or "last" (what one sample is).
        info: JSON-able facts about the collection (model, group size, processes, batches).

    Example:
        >>> stats = collect_stats(model, batches, metrics=["bi", "cka"])  # doctest: +SKIP
        >>> stats.scores()["bi"].shape  # doctest: +SKIP
        torch.Size([30])
    """

    num_blocks: int
    metrics: tuple[str, ...]
    sums: dict[str, Tensor]
    token_mode: str = "tokens"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Valid (non-padding) tokens the statistics were computed on, over all processes."""
        return int(self.sums["tokens"])

    @property
    def num_sequences(self) -> int:
        """Sequences with at least one valid token, over all processes."""
        return int(self.sums["sequences"])

    def scores(self) -> dict[str, Tensor]:
        """Each requested metric's result (float64 CPU tensors), by metric name."""
        return {name: METRICS.get(name).compute(self.sums) for name in self.metrics}

    def to_state(self) -> dict[str, Any]:
        """A dict of tensors and plain values that `torch.load(weights_only=True)` reads back."""
        return {
            "format_version": FORMAT_VERSION,
            "num_blocks": self.num_blocks,
            "metrics": list(self.metrics),
            "token_mode": self.token_mode,
            "sums": {k: v.detach().cpu().double() for k, v in self.sums.items()},
            "info": dict(self.info),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LayerStats:
        """The inverse of :meth:`to_state`."""
        return cls(
            num_blocks=int(state["num_blocks"]),
            metrics=tuple(state["metrics"]),
            sums=dict(state["sums"]),
            token_mode=str(state["token_mode"]),
            info=dict(state.get("info", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the sums and metadata to `path` (torch.save, atomic replace).

        Example:
            >>> stats.save("stats.pt"); LayerStats.load("stats.pt").scores()  # doctest: +SKIP
        """
        atomic_torch_save(self.to_state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LayerStats:
        """Read statistics written by :meth:`save`."""
        return cls.from_state(read_state(path))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary sibling, then rename: a crash leaves the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, target)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a statistics or state file, with a CollectError naming the fix when it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CollectError(f"statistics file {path} does not exist; check the path") from None
    except Exception as exc:
        raise CollectError(
            f"{path} is not a prune-llm statistics file ({type(exc).__name__}); delete it or pass another path"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CollectError(
            f"{path} is not a prune-llm statistics file of format {FORMAT_VERSION}; delete it or pass another path"
        )
    return state
