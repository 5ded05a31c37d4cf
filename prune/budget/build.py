"""Build and score budget candidates exactly as the result would be built.

A candidate (blocks cut, FFN neurons kept) is built as a pruning run builds its result: a weight-sharing
cut of the original (`remove_blocks(..., share_weights=True)`: the folds replace parameters, they never
write into the original's tensors), the run's repair (`repair_cut`) and the squeeze (`squeeze_model`),
all fitted on the calibration FIT part; it is scored on the HELD-BACK part of the calibration data (never
the evaluation data): the mean next-token loss for causal LMs, the mean ``1 - cos`` of the final hidden
state to the original's for encoders.

What is reused: the repaired model of a cut and its FFN statistics (one calibration pass) do not depend
on the width, so several widths of one cut cost one repair and one statistics pass (kept for the last
cut, while the Grams fit `CACHE_BYTES`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prune.budget.search import Candidate

logger = logging.getLogger(__name__)

CACHE_BYTES = 2 * 1024**3
HELD_BACK_FRACTION = 0.25


def split_calibration(batches: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The calibration batches as (fit, held back): the last quarter (at least one batch) is held back.

    Raises:
        BudgetError: fewer than two batches.
    """
    from prune.errors import BudgetError

    batches = list(batches)
    if len(batches) < 2:
        raise BudgetError(
            f"a budget search needs at least 2 calibration batches (one to fit, one held back to score), "
            f"got {len(batches)}; raise --calib-samples or lower --batch-size"
        )
    held = max(1, round(HELD_BACK_FRACTION * len(batches)))
    return batches[:-held], batches[-held:]


@dataclass
class Built:
    """A built candidate: the model and what its repair and squeeze reported."""

    candidate: Candidate
    model: nn.Module
    repair: Any
    squeeze: Any


@dataclass
class CandidateBuilder:
    """Builds candidates of one model under one run's options and scores them on held-back data.

    Attributes:
        options: The run's `PruneOptions` (repair, FFN method and ridge, token limits).
        original: The model before pruning (never modified).
        anatomy: Its anatomy.
        kind: "causal-lm" or "encoder".
        fit: Calibration batches the repair and squeeze are fitted on.
        held: Calibration batches held back to score candidates.
        progress: Show progress bars.
    """

    options: Any
    original: nn.Module
    anatomy: Any
    kind: str
    fit: list[Any]
    held: list[Any]
    progress: bool = False
    builds: int = 0
    seconds: float = 0.0
    _reference: list[torch.Tensor] | None = field(default=None, init=False, repr=False)
    _cut: tuple[tuple[int, ...], nn.Module, Any, dict | None] | None = field(
        default=None, init=False, repr=False
    )
    _once: _SeenOnce = field(default_factory=lambda: _SeenOnce(), init=False, repr=False)

    def build(self, candidate: Candidate) -> Built:
        """Cut, repair and squeeze `candidate` (fitted on the fit part)."""
        from prune.width import squeeze_model

        start = time.perf_counter()
        drop, keep = candidate.drop, candidate.keep
        cut, repair, stats = self._repaired(drop)
        size = self._d_ff()
        squeeze = None
        if size and keep < size:
            # a copy of the module tree that shares the repaired weights: the squeeze replaces the
            # parameters it changes, so the cached repaired cut stays as it is for the next width
            model = _share_copy(cut, self.options.block_path)
            result = squeeze_model(
                model,
                self.fit,
                keep=keep / size,
                method=self.options.ffn_method,
                ridge=self.options.ffn_ridge,
                block_group=self.options.ffn_block_group,
                max_tokens=self.options.max_tokens,
                skip_tokens=self.options.skip_tokens,
                inplace=True,
                progress=self.progress,
                stats=None if stats is None else stats[0],
                held_back_stats=None if stats is None else stats[1],
                energy_levels=(),
            )
            model, squeeze = result.model, result.report
        else:
            model = cut
        self.builds += 1
        self.seconds += time.perf_counter() - start
        return Built(candidate, model, repair, squeeze)

    def loss(self, model: nn.Module) -> float:
        """The held-back calibration loss of `model` (lower is better; `prune.repair.guard.held_back_loss`)."""
        from prune.repair.guard import held_back_loss

        return held_back_loss(model, self.held, self.kind, self.reference_outputs())

    def reference_outputs(self) -> list[Any]:
        """The original's final hidden states on the held-back batches (encoders only; cached)."""
        if self._reference is None:
            from prune.repair.guard import reference_outputs

            self._reference = reference_outputs(self.original, self.held, self.kind)
        return self._reference

    def evaluate(self, candidate: Candidate) -> float:
        """Build `candidate` and return its held-back loss."""
        built = self.build(candidate)
        value = self.loss(built.model)
        logger.info("budget: %s -> held-back loss %.4f", candidate.label(self._d_ff()), value)
        return value

    def _d_ff(self) -> int:
        if self.anatomy.mlp is None:
            return 0
        return int(self.anatomy.mlp.intermediate_size(self.anatomy.blocks(self.original)[0]))

    def _repaired(self, drop: tuple[int, ...]):
        """The cut + repaired model of `drop` and its FFN statistics (cached for the last cut)."""
        from prune.repair import repair_from_options
        from prune.surgery import remove_blocks
        from prune.width.stats import gram_bytes

        if self._cut is not None and self._cut[0] == drop:
            return self._cut[1], self._cut[2], self._cut[3]
        self._cut = None
        options = self.options
        cut = remove_blocks(self.original, drop, anatomy=self.anatomy, share_weights=True)
        # many candidates share a span (e.g. one starting at block 0): say each repair warning once
        repair_loggers = [
            logging.getLogger(name) for name in ("prune.repair.stage", "prune.repair.from_options")
        ]
        for repair_logger in repair_loggers:
            repair_logger.addFilter(self._once)
        try:
            # no refit: the search has always built (and returned) its candidates with the maps alone
            repair = repair_from_options(
                self.original,
                cut,
                drop,
                self.fit,
                options,
                anatomy=self.anatomy,
                progress=self.progress,
                refit=False,
            )
        finally:
            for repair_logger in repair_loggers:
                repair_logger.removeFilter(self._once)
        stats = None
        size = self._d_ff()
        kept = self.anatomy.num_blocks - len(drop)
        hold_back = options.ffn_ridge == "auto"
        # two Grams per block with the held-back batches summed apart
        if size and kept * (2 if hold_back else 1) * gram_bytes(size) <= CACHE_BYTES:
            from prune.anatomy import get_anatomy
            from prune.width.ridge import collect_split_stats

            # with the ridge chosen on held-back batches, their statistics are kept apart (squeeze_model's
            # `held_back_stats`); the same tokens either way
            stats = collect_split_stats(
                cut,
                self.fit,
                get_anatomy(cut, options.block_path),
                list(range(kept)),
                hold_back=hold_back,
                max_tokens=options.max_tokens,
                skip_tokens=options.skip_tokens,
                progress=self.progress,
            )
        self._cut = (drop, cut, repair, stats)
        return cut, repair, stats


class _SeenOnce(logging.Filter):
    """A logging filter that lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _share_copy(model: nn.Module, block_path: str | None) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are `model`'s tensors (a zero-block cut)."""
    from prune.anatomy import get_anatomy
    from prune.surgery import remove_blocks

    return remove_blocks(model, (), anatomy=get_anatomy(model, block_path), share_weights=True)


def perplexity(loss: float) -> float:
    """exp(loss), inf on overflow."""
    return math.exp(loss) if loss < 700 else math.inf


__all__ = ["Built", "CandidateBuilder", "perplexity", "split_calibration"]
