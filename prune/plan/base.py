"""What every strategy shares: the plan it produces, its interface, and the registry it joins.

A strategy is an object with a name, the metrics it can rank by, and a `select` method that turns one
`SelectRequest` (scores, block count, how many to drop, metric, ...) into a `Selection` (which blocks,
why, and the numbers behind it). Each strategy registers
itself in `STRATEGIES` from the module that defines it; parameterised variants (``topk`` and ``cka``)
are instances of one class with different parameters, not subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from prune.errors import PlanError
from prune.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

    from prune.plan.search_context import SearchContext


@dataclass(frozen=True)
class Plan:
    """Which blocks to remove, and why.

    Attributes:
        num_blocks: how many blocks the model has before pruning.
        drop: the blocks to remove, sorted, 0-based.
        strategy: the strategy that chose them.
        metric: the score it ranked by (None for strategies that use no score).
        target: the target as the user wrote it.
        reason: one sentence, with the numbers, saying why these blocks.
        details: JSON-able numbers behind the choice (scores of every candidate, search steps, ...).

    Example:
        >>> plan = Plan(4, (1, 2), "span", "angular", "2-layers", "blocks 1-2 ...", {})
        >>> plan.keep
        (0, 3)
    """

    num_blocks: int
    drop: tuple[int, ...]
    strategy: str
    metric: str | None
    target: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        drop = tuple(sorted(int(i) for i in self.drop))
        if len(set(drop)) != len(drop) or any(not 0 <= i < self.num_blocks for i in drop):
            raise PlanError(
                f"invalid plan: drop={list(drop)} for {self.num_blocks} blocks; indices must be unique and in range"
            )
        object.__setattr__(self, "drop", drop)

    @property
    def keep(self) -> tuple[int, ...]:
        """The blocks that stay, in order."""
        dropped = set(self.drop)
        return tuple(i for i in range(self.num_blocks) if i not in dropped)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``keep`` included) for reports and model cards."""
        return {
            "num_blocks": self.num_blocks,
            "drop": list(self.drop),
            "keep": list(self.keep),
            "strategy": self.strategy,
            "metric": self.metric,
            "target": self.target,
            "reason": self.reason,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """The plan `to_dict` wrote (``keep`` is derived, so it is ignored)."""
        return cls(
            num_blocks=int(data["num_blocks"]),
            drop=tuple(data["drop"]),
            strategy=str(data["strategy"]),
            metric=data.get("metric"),
            target=str(data["target"]),
            reason=str(data.get("reason", "")),
            details=dict(data.get("details", {})),
        )


@dataclass(frozen=True)
class SelectRequest:
    """What a strategy is asked to choose: `num_drop` of `num_blocks` blocks, from `scores`.

    Attributes:
        scores: the collector's scores by metric name (``LayerStats.scores()``).
        num_blocks: how many blocks the model has (L).
        num_drop: how many to remove (the target, already parsed).
        metric: the score to rank by, already resolved by `Strategy.resolve_metric` (None: none used).
        allow_last: whether the last block may be removed.
        seed: seed of the strategies that draw at random.
        search: the model and batches of strategies that evaluate candidates (`Strategy.needs_search`).

    Example:
        >>> import torch
        >>> request = SelectRequest({"bi": torch.tensor([0.3, 0.1, 0.2])}, 3, 1, metric="bi")
        >>> STRATEGIES.get("topk").select(request).drop
        (1,)
    """

    scores: Mapping[str, Tensor]
    num_blocks: int
    num_drop: int
    metric: str | None = None
    allow_last: bool = False
    seed: int = 0
    search: SearchContext | None = None


@dataclass(frozen=True)
class Selection:
    """What a strategy returns: the blocks, a one-sentence reason and JSON-able details."""

    drop: tuple[int, ...]
    reason: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Strategy:
    """Base of the layer-selection strategies.

    Attributes:
        name: the registered name.
        description: one line for help texts.
        metrics: the metric names it accepts (empty: it uses none).
        default_metric: the metric used when none is given.
        needs_search: whether it evaluates the model on data (then its request needs a `SearchContext`);
            ask the strategy (``get_strategy(name).needs_search``), never probe for the attribute.
    """

    name: str
    description: str
    metrics: tuple[str, ...] = ()
    default_metric: str | None = None
    needs_search: ClassVar[bool] = False

    def resolve_metric(self, metric: str | None) -> str | None:
        """The metric this strategy will use for `metric` (its default for None); PlanError if unsupported."""
        if metric is None:
            return self.default_metric
        if not self.metrics:
            raise PlanError(f"strategy {self.name!r} uses no metric; drop the metric {metric!r}")
        if metric not in self.metrics:
            raise PlanError(
                f"strategy {self.name!r} cannot rank by {metric!r}; choose one of: {', '.join(self.metrics)}"
            )
        return metric

    def required_metrics(self, metric: str | None) -> tuple[str, ...]:
        """What `collect_stats` must gather for this strategy with `metric`."""
        from prune.plan.scoring import get_ranking

        resolved = self.resolve_metric(metric)
        return get_ranking(resolved).needs if resolved is not None else ()

    def select(self, request: SelectRequest) -> Selection:
        """Choose ``request.num_drop`` of ``request.num_blocks`` blocks (its metric is already resolved)."""
        raise NotImplementedError


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register(strategy: Strategy) -> Strategy:
    """Add `strategy` to `STRATEGIES` under its own name."""
    return STRATEGIES.register(strategy.name, strategy)


def candidate_blocks(num_blocks: int, allow_last: bool) -> list[int]:
    """The blocks a strategy may drop: all of them, or all but the last (the most important one)."""
    return list(range(num_blocks if allow_last else num_blocks - 1))


def describe_blocks(blocks: Sequence[int]) -> str:
    """ "block 3", "blocks 3-5" for a run, "blocks 1, 4 and 7" otherwise."""
    blocks = sorted(blocks)
    if len(blocks) == 1:
        return f"block {blocks[0]}"
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"blocks {blocks[0]}-{blocks[-1]}"
    return f"blocks {', '.join(str(b) for b in blocks[:-1])} and {blocks[-1]}"


def last_note(allow_last: bool, num_blocks: int) -> str:
    """How the last block was treated, for the reason sentence."""
    return "" if allow_last else f"; the last block ({num_blocks - 1}) was not a candidate"
