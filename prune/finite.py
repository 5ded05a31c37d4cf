"""Refuse non-finite numbers early, naming where they first appear.

A NaN or inf weight makes every statistic and every metric NaN without any error: the analysis prints
rows of ``nan`` and the planner blames the data. `check_finite_weights` is one pass over the parameters
(run right after loading, in every command); `check_finite_states` checks the hidden states of one
forward pass (run by the collector per batch), so activations that overflow are caught too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prune.errors import NumericalError


def _where(name: str, block_path: str | None) -> str:
    """'block 3' for a parameter inside the block list, else 'outside the blocks'."""
    if block_path:
        prefix = block_path + "."
        if name.startswith(prefix):
            index = name[len(prefix) :].split(".", 1)[0]
            if index.isdigit():
                return f"block {index}"
    return "outside the blocks"


def check_finite_weights(model: nn.Module, *, block_path: str | None = None, name: str = "the model") -> None:
    """Raise if any parameter or buffer of `model` holds NaN or inf.

    Args:
        model: any module.
        block_path: dotted path of the block list (``Anatomy.block_path``), to name the block.
        name: how the model is called in the message.

    Raises:
        NumericalError: names the first bad tensor, its block and how many values are bad.

    Example:
        >>> check_finite_weights(torch.nn.Linear(2, 2))
    """
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for tensor_name, tensor in tensors:
            if not tensor.is_floating_point() or tensor.device.type == "meta":
                continue
            finite = torch.isfinite(tensor)
            if bool(finite.all()):
                continue
            bad = int((~finite).sum())
            raise NumericalError(
                f"{name} has {bad} non-finite (NaN or inf) value(s) in {kind} {tensor_name} "
                f"({_where(tensor_name, block_path)}): every score and metric would be NaN; the checkpoint "
                "is corrupt or was saved after a diverged run, so load a good copy (a lower --dtype than "
                "the weights were trained in can overflow too: try --dtype float32)"
            )


def check_finite_states(
    states: Sequence[torch.Tensor], mask: torch.Tensor | None, batch_index: int, what: str | None = None
) -> None:
    """Raise if the hidden states of one forward pass hold NaN or inf at the tokens that count.

    Args:
        states: h_0 (input of block 0) then the output of each block, [batch, tokens, features].
        mask: bool [batch, tokens] of the tokens that count (padding may hold anything), or None.
        batch_index: which batch this is, for the message.
        what: where the batch comes from, for the message (default: "calibration batch N").

    Raises:
        NumericalError: names the first block whose output is non-finite.

    Example:
        >>> check_finite_states([torch.zeros(1, 2, 3)], None, 0)
    """
    for position, hidden in enumerate(states):
        # Per token, without copying the counted tokens out (a bool per element, freed at once).
        finite = torch.isfinite(hidden).all(dim=-1) if hidden.dim() == 3 else torch.isfinite(hidden)
        if mask is not None and mask.shape == finite.shape:
            finite = finite | ~mask.to(finite.device)
        if bool(finite.all()):
            continue
        where = (
            "the embeddings (input of block 0)" if position == 0 else f"the output of block {position - 1}"
        )
        raise NumericalError(
            f"non-finite activations (NaN or inf) first appear in {where} ({what or f'calibration batch {batch_index}'}): "
            "every score and metric would be NaN; the weights are finite, so the forward pass overflows: run "
            "in --dtype float32, or check the model on this text"
        )


def check_finite_logits(
    logits: torch.Tensor, what: str, hidden_states: Callable[[], Sequence[torch.Tensor]] | None = None
) -> Any:
    """Raise if `logits` hold NaN or inf (an evaluation would report NaN perplexity without an error).

    Args:
        logits: the output to check.
        what: the model and batch, for the message.
        hidden_states: reruns the batch returning every hidden state, to name the first bad block (only
            called when the logits are bad).
    """
    if bool(torch.isfinite(logits).all()):
        return logits
    if hidden_states is not None:
        check_finite_states(hidden_states(), None, 0, what=what)
    raise NumericalError(
        f"{what} produced non-finite logits (NaN or inf): its metrics would be NaN; run in --dtype "
        "float32, or check the model's weights"
    )
