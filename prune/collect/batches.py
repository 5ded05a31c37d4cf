"""Calibration batches as the collectors see them: checks, device moves, the token budget, the mask.

`budgeted_batches` is the one batch loop of `prune.collect.collect_stats` and
`prune.collect.collect_site_sums`: it skips the batches a resumed run already consumed, stops at the
process's token budget, checks each batch, cuts the one that crosses the budget and moves it to the
device. `process_share` and `state_file_for` split the budget and the state file over processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from prune.errors import AnatomyError, DataError


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with its tensors on `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _rows(batch: Any, rows: int) -> Any:
    """The first `rows` sequences of a batch (tensors whose first dimension is the batch)."""
    if isinstance(batch, Tensor):
        return batch[:rows]
    size = _batch_size(batch)
    return {
        k: v[:rows] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size else v
        for k, v in batch.items()
    }


def _batch_size(batch: dict) -> int | None:
    for key in ("attention_mask", "input_ids", "inputs_embeds"):
        if isinstance(batch.get(key), Tensor):
            return batch[key].shape[0]
    return None


def check_batch(batch: Any, index: int) -> None:
    """A DataError naming the fix for a batch the collector cannot run."""
    if isinstance(batch, Tensor):
        return
    if not isinstance(batch, dict):
        raise DataError(
            f"batch {index} is a {type(batch).__name__}; pass dicts of tensors (model(**batch)) or tensors (model(batch))"
        )
    mask = batch.get("attention_mask")
    if mask is not None and (not isinstance(mask, Tensor) or mask.dim() != 2):
        raise DataError(
            f"batch {index}: attention_mask must be a [batch, tokens] tensor; pass a 2-D padding mask"
        )
    ids = batch.get("input_ids")
    if mask is not None and isinstance(ids, Tensor) and ids.shape != mask.shape:
        raise DataError(
            f"batch {index}: attention_mask {tuple(mask.shape)} and input_ids {tuple(ids.shape)} differ; "
            "pass one mask entry per token"
        )


def skip_first_tokens(mask: Tensor, skip: int) -> Tensor:
    """bool [B, T]: `mask` without the first `skip` valid tokens of each row (left or right padding).

    Example:
        >>> skip_first_tokens(torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]]), 1).int().tolist()
        [[0, 0, 1, 1], [0, 1, 0, 0]]
    """
    mask = mask.bool()
    if skip <= 0:
        return mask
    return mask & (mask.cumsum(1) > skip)


def rows_within_budget(batch: Any, remaining: int, skip: int = 0) -> Any:
    """Drop whole rows that lie past the token budget, before spending a forward pass on them.

    `skip` first tokens of each row do not count towards the budget (see `skip_first_tokens`).
    """
    if not isinstance(batch, dict):
        return batch
    mask = batch.get("attention_mask")
    if mask is None and isinstance(batch.get("input_ids"), Tensor) and batch["input_ids"].dim() == 2:
        mask = torch.ones_like(batch["input_ids"])
    if mask is None:
        return batch
    per_row = skip_first_tokens(mask, skip).sum(1).cumsum(0)
    needed = int((per_row < remaining).sum()) + 1
    return _rows(batch, needed) if needed < mask.shape[0] else batch


def valid_mask(batch: Any, hidden: Tensor, remaining: int | None, skip: int = 0) -> Tensor:
    """bool [B, T]: tokens that count (not padding, not among the first `skip` of their row, within the
    budget), on the hidden state's device."""
    if hidden.dim() != 3:
        raise AnatomyError(
            f"block hidden states have shape {tuple(hidden.shape)}, expected [batch, tokens, features]; "
            "pass block_path naming the transformer blocks"
        )
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    else:
        mask = mask.to(hidden.device).bool()
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise DataError(
            f"attention_mask has shape {tuple(mask.shape)} but the blocks see {tuple(hidden.shape[:2])} tokens; "
            "pass one mask entry per token"
        )
    mask = skip_first_tokens(mask, skip)
    if remaining is not None:
        # Exact budget: keep the first `remaining` valid tokens in reading order (row by row).
        mask = mask & (mask.flatten().cumsum(0) <= remaining).view_as(mask)
    return mask


def process_share(max_tokens: int | None, accelerator: Any) -> tuple[int, int, int | None]:
    """``(rank, world, budget)``: this process's index, the number of processes and its token budget
    (``max_tokens // world``, one more for the first ``max_tokens % world`` processes; None: no budget).

    Example:
        >>> process_share(10, None)
        (0, 1, 10)
    """
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    budget = None if max_tokens is None else max_tokens // world + (1 if rank < max_tokens % world else 0)
    return rank, world, budget


def state_file_for(state_path: str | os.PathLike[str] | None, rank: int, world: int) -> str | None:
    """This process's state file: `state_path` itself, or ``<state_path>.rank<N>`` with several processes.

    Example:
        >>> state_file_for("sums.pt", 1, 2), state_file_for(None, 0, 1)
        ('sums.pt.rank1', None)
    """
    if state_path is None:
        return None
    return f"{os.fspath(state_path)}.rank{rank}" if world > 1 else os.fspath(state_path)


def budgeted_batches(
    batches: Iterable[Any],
    *,
    consumed: int,
    remaining: Callable[[], int | None],
    skip_tokens: int,
    device: torch.device,
) -> Iterator[tuple[int, Any, int | None]]:
    """``(index, batch, tokens left)`` for the batches a collection still has to read.

    Args:
        batches: the calibration batches.
        consumed: batches a resumed run already read (skipped).
        remaining: the tokens the budget still allows, asked before each batch (None: no budget).
        skip_tokens: tokens left out of every sequence (they do not count against the budget).
        device: where the batch goes.
    """
    for index, batch in enumerate(batches):
        if index < consumed:
            continue
        left = remaining()
        if left is not None and left <= 0:
            break
        check_batch(batch, index)
        if left is not None:
            batch = rows_within_budget(batch, left, skip_tokens)
        yield index, to_device(batch, device), left
