"""Calibration batches as the collector sees them: checks, device moves, the token budget, the mask."""

from __future__ import annotations

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
