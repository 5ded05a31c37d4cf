"""Run a range of a model's blocks alone, on hidden states the caller holds, capturing tensors inside.

The error-correcting refit (`prune.repair.refit`) advances two models block by block over the same
calibration batches; running the whole model for each step would cost a full forward per block. A
`BlockSegment` points the model at blocks ``first..last`` (`prune.surgery`, and back afterwards),
replaces the first block's input by the given hidden states and stops after the last block, with the
capture hooks of `prune.collect.capture` at any sites inside.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from prune.collect.capture import CaptureSite, _SiteHooks, _StopForward
from prune.forward import forward_accepts


class BlockSegment:
    """Blocks ``first..last`` of `model`, run alone on given hidden states.

    Args:
        model: the model (its blocks are found with `anatomy`).
        anatomy: the model's `prune.anatomy.Anatomy`.
        first, last: the block range, inclusive.
    """

    def __init__(self, model: nn.Module, anatomy: Any, first: int, last: int) -> None:
        self.model, self.anatomy, self.first, self.last = model, anatomy, first, last
        self.extra = {"use_cache": False} if forward_accepts(model, "use_cache") else {}

    def run(self, batch: Any, hidden: Tensor, sites: dict[str, tuple[int, str, str]]) -> dict[str, Tensor]:
        """Run the segment on `hidden` (the input of block `first`) for `batch`'s masks and positions.

        Args:
            batch: the calibration batch (its attention mask and positions are used; its tokens are not).
            hidden: the hidden state entering block `first`.
            sites: name -> (block index in the model, module path inside the block, "input"|"output").

        Returns:
            The captured tensors by name, plus ``"out"``: the last block's output.
        """
        from prune.surgery import _rewire

        indices = list(range(self.first, self.last + 1))
        blocks = self.anatomy.blocks(self.model)
        chosen = [blocks[i] for i in indices]
        local = {name: CaptureSite(block - self.first, path, io) for name, (block, path, io) in sites.items()}
        local["out"] = CaptureSite(len(chosen) - 1, "", "output")

        def substitute(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        undo = _rewire(self.model, self.anatomy, indices)
        # registered before the capture hooks, so that an input site of the first block sees `hidden`
        handle = chosen[0].register_forward_pre_hook(substitute, with_kwargs=True)
        hooks = None
        try:
            hooks = _SiteHooks(chosen, local)
            with torch.no_grad(), contextlib.suppress(_StopForward):
                if isinstance(batch, dict):
                    self.model(**batch, **self.extra)
                else:
                    self.model(batch, **self.extra)
        finally:
            if hooks is not None:
                hooks.remove()
            handle.remove()
            undo()
        return hooks.captured


def block_input(model: nn.Module, anatomy: Any, block: int, batch: Any) -> Tensor:
    """The hidden state entering `block` for `batch` (a normal forward, stopped there)."""
    captured: list[Tensor] = []

    def hook(module, args, kwargs):
        value = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
        captured.append(value.detach().clone())
        raise _StopForward

    extra = {"use_cache": False} if forward_accepts(model, "use_cache") else {}
    handle = anatomy.blocks(model)[block].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), contextlib.suppress(_StopForward):
            model(**batch, **extra) if isinstance(batch, dict) else model(batch, **extra)
    finally:
        handle.remove()
    return captured[0]


__all__ = ["BlockSegment", "block_input"]
