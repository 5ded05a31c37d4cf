"""The squeeze's ridge, chosen per block on calibration batches held back from the fit.

The least-squares fold overfits its calibration tokens: on SmolLM2-135M at keep 0.75 the relative FFN
output error is 0.039 on the 16k tokens it was fitted on and 0.055 on other text (benchmarks/README.md).
A ridge trades some of that back, and the best one depends on the block and on the token count, so it
is measured rather than fixed: every `HOLD_BACK_EVERY`-th calibration batch is collected apart, each
block's fold is fitted on the others for every ridge of `RIDGE_GRID`, and the ridge whose fold has the
smallest output error on the held-back batches wins. The final fold is then fitted on *all* the
batches (the held-back ones too) with that ridge, so nothing is lost by holding them back; and the
held-back error of the chosen fit is reported, an honest estimate of the error on new text (the
calibration error is not one).

Both parts are sums over tokens, so holding batches back costs no forward pass: the same tokens are
summed into two sets of statistics instead of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prune.width.compensate import Compensation, interpolation, relative_output_error
from prune.width.selection import BlockProblem, Selector

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
HOLD_BACK_EVERY = 5


@dataclass(frozen=True)
class RidgeChoice:
    """The ridge chosen for one block and the held-back output error of each candidate."""

    ridge: float
    held_back_error: float
    errors: dict[float, float]


def hold_back_split(batches: Sequence[Any], every: int = HOLD_BACK_EVERY) -> tuple[list[Any], list[Any]]:
    """Split the calibration batches into (fit, held back): every `every`-th batch is held back.

    Interleaved rather than the tail, so that both parts sample the whole text. Fewer than two batches
    give nothing to hold back: ``(batches, [])``.

    Example:
        >>> hold_back_split(list(range(10)))
        ([0, 1, 2, 3, 5, 6, 7, 8], [4, 9])
        >>> hold_back_split([0])
        ([0], [])
    """
    batches = list(batches)
    if len(batches) < 2:
        return batches, []
    held = [b for i, b in enumerate(batches) if i % every == every - 1]
    if not held:  # fewer than `every` batches: hold the last one back
        return batches[:-1], batches[-1:]
    return [b for i, b in enumerate(batches) if i % every != every - 1], held


def split_token_budget(max_tokens: int | None, every: int = HOLD_BACK_EVERY) -> tuple[int | None, int | None]:
    """A token budget shared the way `hold_back_split` shares the batches: (fit, held back).

    Example:
        >>> split_token_budget(1000)
        (800, 200)
        >>> split_token_budget(None)
        (None, None)
    """
    if max_tokens is None:
        return None, None
    held = max(1, max_tokens // every)
    return max(1, max_tokens - held), held


def collect_split_stats(
    model: Any,
    batches: Sequence[Any],
    anatomy: Any,
    blocks: Sequence[int],
    *,
    hold_back: bool = True,
    max_tokens: int | None = None,
    **collect: Any,
) -> tuple[dict[int, Any], dict[int, Any] | None]:
    """The FFN statistics of the fitted-on and the held-back batches (`hold_back_split`), summed apart.

    Args:
        model, batches, anatomy, blocks: As for `prune.width.stats.collect_ffn_stats`.
        hold_back: Hold batches back; False sums every batch into the first part.
        max_tokens: Token budget of both parts together (shared by `split_token_budget`).
        **collect: ``skip_tokens``, ``accelerator``, ``progress`` of `collect_ffn_stats`.

    Returns:
        ``(fit, held_back)``: one `FfnStats` per block each; ``held_back`` is None when nothing was held
        back (`hold_back` off, or fewer than two batches).
    """
    from prune.width.stats import collect_ffn_stats

    fit_batches, held_batches = hold_back_split(batches) if hold_back else (list(batches), [])
    if not held_batches:
        return collect_ffn_stats(model, fit_batches, anatomy, blocks, max_tokens=max_tokens, **collect), None
    fit_tokens, held_tokens = split_token_budget(max_tokens)
    fit = collect_ffn_stats(model, fit_batches, anatomy, blocks, max_tokens=fit_tokens, **collect)
    held = collect_ffn_stats(model, held_batches, anatomy, blocks, max_tokens=held_tokens, **collect)
    return fit, held


def choose_ridge(
    fit: BlockProblem,
    held_back: BlockProblem,
    count: int,
    selector: Selector,
    compensation: Compensation,
    *,
    selection_ridge: float,
    grid: Sequence[float] = RIDGE_GRID,
) -> RidgeChoice:
    """The ridge of `grid` whose fold, fitted on `fit`, has the least output error on `held_back`.

    The neurons are selected once on `fit` (with `selection_ridge`; the selection barely depends on it),
    then one solve per candidate ridge; ties go to the larger ridge (the safer fit).

    Args:
        fit: The block's problem on the batches fitted on.
        held_back: The same block's problem on the held-back batches (same weights, other moments).
        count: Neurons kept.
        selector: The method's selection.
        compensation: The method's compensation ("ls" is the one with a ridge).
        selection_ridge: Ridge of the selection.
        grid: Candidate ridges.
    """
    kept = selector(fit, count, selection_ridge)
    errors: dict[float, float] = {}
    for ridge in grid:
        transform, offset = interpolation(fit, kept, compensation, ridge)
        errors[float(ridge)] = relative_output_error(held_back, kept, transform, offset)
    best = min(sorted(errors, reverse=True), key=lambda r: errors[r])
    return RidgeChoice(ridge=best, held_back_error=errors[best], errors=errors)


__all__ = [
    "HOLD_BACK_EVERY",
    "RIDGE_GRID",
    "RidgeChoice",
    "choose_ridge",
    "collect_split_stats",
    "hold_back_split",
    "split_token_budget",
]
